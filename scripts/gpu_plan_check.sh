#!/usr/bin/env bash
# `qtune plan --measure` on a random-weight Llama-2-7B-shaped model on CUDA: the plan's peak memory and step time
# beside two real training steps of recipes/llama7b-nf4.yaml (NF4 + double quant, bf16 compute, LoRA r=16 on every
# linear, paged 8-bit AdamW, gradient checkpointing), at micro batch 1 and 4. Logs go to $OUT (plan7b_b*.log).
#
# The weights are random (memory and speed do not depend on their values) and drawn on the GPU, then written as
# a 13.5 GB bf16 checkpoint to /tmp (the machine has 64 GiB of disk). The tokenizer is SmolLM2's, from .gpu/tiny,
# so the vocabulary is 49152 instead of Llama-2's 32000 (the plan is computed for the same config it measures).
# About 5-7 minutes on one H100/H200: run it with timeout_s=540.
#
# Prepare (on the CPU machine, once): scripts/prepare_gpu_site.sh   (.gpu/site, .gpu/whl, .gpu/tiny; git-ignored)
#   # device tool: run(command="bash scripts/gpu_plan_check.sh", carry=[".gpu"], timeout_s=540)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/.gpu/out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/.gpu/site:$PWD" PYTHONUNBUFFERED=1 TRITON_INTERPRET=0
PY=${PY:-python3}
MODEL=${MODEL:-/tmp/llama7b-random}
status=0

if ! (command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1); then
    echo "no GPU: this check needs CUDA (the 7B plan from config alone: qtune plan recipes/llama7b-nf4.yaml model.path=DIR --memory 24GiB)"
    exit 1
fi
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PYTHONPATH"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/plan7b_env.log"

if ! compgen -G "$MODEL/*.safetensors" >/dev/null; then
    timeout 240 "$PY" scripts/make_shaped_model.py "$MODEL" --weights --tokenizer-from .gpu/tiny --vocab 49152 2>&1 \
        | tee "$OUT/plan7b_make.log"
    [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "could not write $MODEL"; exit 1; }
fi

for b in 1 4; do
    echo "== plan --measure, micro batch $b"
    timeout 240 "$PY" -m qtune.cli plan recipes/llama7b-nf4.yaml model.path="$MODEL" tracking.backend=none \
        train.micro_batch_size="$b" --measure 2>&1 | tee "$OUT/plan7b_b$b.log"
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
done
echo "== summary"
grep -h "training peak\|step time\|^plan:" "$OUT"/plan7b_b*.log
exit $status
