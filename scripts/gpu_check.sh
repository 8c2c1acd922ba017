#!/usr/bin/env bash
# One GPU check for qtune's kernels: the kernel tests compiled (no interpreter), then the dequant, GEMV and
# training-step benchmarks, each against its baseline measured in the same run. Logs go to $OUT (one file per
# step, 5 files). A few minutes on one H100/H200; the step limits add up to 600 s, one device call's limit.
#
# Prepare (on the CPU machine, once), then run from the repository root on the GPU machine:
#   scripts/prepare_gpu_site.sh                 # copies site-packages/bitsandbytes + its dist-info into .gpu/site,
#                                               # keeping only libbitsandbytes_cuda130.so (~5 MB; .gpu/ is git-ignored)
#   # device tool: run(command="bash scripts/gpu_check.sh", carry=[".gpu"], timeout_s=600)
# The script itself sets  PYTHONPATH=$PWD/.gpu/site:$PWD  (bitsandbytes from the carried folder, qtune from the
# tree) and TRITON_INTERPRET=0. The image must have torch, triton, transformers, peft, accelerate and pytest.
#
# Without a GPU (no nvidia-smi) the same steps run as a dry run on CPU: tests under the interpreter, benchmarks
# on small shapes, so the script can be checked anywhere.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/.gpu/out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/.gpu/site:$PWD" PYTHONUNBUFFERED=1
PY=${PY:-python3}
status=0

step() {  # step NAME SECONDS CMD...: run CMD under a time limit, log to $OUT/NAME.log, remember failures
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*"
    timeout "$((limit * slow))" "$@" 2>&1 | tee "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "== $name exit $rc"
    [ "$rc" -eq 0 ] || status=1
}

if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
    export TRITON_INTERPRET=0
    slow=1
    small=()
    train=()
else
    echo "no GPU: dry run on CPU (interpreter, small shapes)"
    export TRITON_INTERPRET=1
    slow=4  # the interpreter and 2 shared CPU cores: same steps, looser limits
    small=(--shapes 1024x1024)
    train=(--size small --steps 1 --warmup 1 --seq 64 --repeats 1)
fi

step env 30 "$PY" -c "
import torch, triton, transformers, peft, bitsandbytes
print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')
print('triton', triton.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'bitsandbytes', bitsandbytes.__version__)
"
step tests 180 "$PY" -m pytest tests/kernels -q -p no:cacheprovider
step bench_dequant 90 "$PY" scripts/bench_dequant.py "${small[@]}"
step bench_gemv 60 "$PY" scripts/bench_gemv.py "${small[@]}"
step bench_train_step 240 "$PY" scripts/bench_train_step.py "${train[@]}"

echo "== summary"
grep -h "^device\|best qtune\|ratio\|passed\|failed" "$OUT"/tests.log "$OUT"/bench_*.log
exit $status
