#!/usr/bin/env bash
# Issue 15's GPU check, one command: the training step against HF peft + bitsandbytes on the Llama-2-7B shape (micro
# batches 4 x 1024 and 1 x 2048, side by side in one process) in the blocks mode and the combined fast path (fast:
# blocks + train.frozen_dtype compute + liger cross-entropy, RMSNorm and RoPE — tokens/s and peak memory ratios), the
# step's profile in the baseline and the blocks mode, and the 4-bit GEMV warm / cold-L2 / in a CUDA graph. The triton
# mode is left out to keep the same time (its sm90 figure, 0.96x, is in qtune/kernels/dispatch.py MEASURED; add
# "triton" to --modes to re-measure it). Logs go to $OUT (4 files).
# Estimated 6-7 minutes on one H100/H200 (a 7B build is ~1 minute, twice): run it with timeout_s=540.
# train.compile (the baseline with each decoder layer compiled, beside the baseline) is a second call when time is
# left, as it adds a compile to the warm-up:
#   run(command="bash scripts/gpu_fast_path_check.sh compile", carry=[".gpu"], timeout_s=400)
#
# Prepare once on the CPU machine: scripts/prepare_gpu_site.sh .venv/bin/python (.gpu/site: bitsandbytes for CUDA 13.0
# and liger-kernel, from a venv that has both), then
#   # device tool: run(command="bash scripts/gpu_fast_path_check.sh", carry=[".gpu"], timeout_s=540)
# A ratio it prints enters `train.kernels: auto` only by being written into qtune/kernels/dispatch.py MEASURED
# (key: "cuda smXY" as printed on the env line) with the figure.
source "$(dirname "$0")/gpu_env.sh"
export TRITON_INTERPRET=0
status=0
step() {  # step NAME SECONDS CMD...
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*"
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "== $name exit $rc"
    [ "$rc" -eq 0 ] || status=1
}
cd scripts
step env 30 "$PY" -c "
import torch, triton, transformers, peft, bitsandbytes
cap = torch.cuda.get_device_capability()
print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(), f'kind: cuda sm{cap[0]}{cap[1]}')
print('triton', triton.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'bitsandbytes', bitsandbytes.__version__)
"
step env_liger 30 "$PY" -c "import liger_kernel.transformers.monkey_patch as m; print('liger-kernel importable')"
if [ "${1:-}" = compile ]; then
    step bench_compiled 360 "$PY" bench_train_step.py --modes compiled --micro 4x1024
    grep -h "^device\|^ratio" "$OUT"/bench_compiled.log
    exit $status
fi
step bench_train_step 300 "$PY" bench_train_step.py --modes bitsandbytes blocks fast
step profile_train_step 150 "$PY" profile_train_step.py --kernels bitsandbytes blocks --out "$OUT/profile.txt"
step bench_gemv 60 "$PY" bench_gemv.py
echo "== summary"
grep -h "^device\|^ratio\|^saved\|best qtune" "$OUT"/bench_*.log
exit $status
