#!/usr/bin/env bash
# One GPU check for qtune: the kernel tests compiled (no interpreter), the dequant, GEMV and training-step
# benchmarks, each against its baseline measured in the same run, and `qtune train` end to end on a tiny model
# (CUDA, bf16 compute, NF4 base; Triton kernels, then bitsandbytes). Logs go to $OUT (one file per step,
# 7 files). About four minutes on one H100: run it with timeout_s=420, leaving room in a 15-minute budget.
#
# Prepare (on the CPU machine, once), then run from the repository root on the GPU machine:
#   scripts/prepare_gpu_site.sh                 # .gpu/site: bitsandbytes with only libbitsandbytes_cuda130.so;
#                                               # .gpu/whl: pydantic wheels; .gpu/tiny: a tiny model (~25 MB, git-ignored)
#   # device tool: run(command="bash scripts/gpu_check.sh", carry=[".gpu"], timeout_s=420)
# The script itself sets  PYTHONPATH=$PWD/.gpu/site:$PWD  (bitsandbytes from the carried folder, qtune from the
# tree) and TRITON_INTERPRET=0. The image must have torch, triton, transformers, peft, accelerate and pytest.
#
# Without a GPU (no nvidia-smi) the same steps run as a dry run on CPU: tests under the interpreter, benchmarks
# on small shapes, so the script can be checked anywhere.
source "$(dirname "$0")/gpu_env.sh"
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
    e2e=(train.device=cuda quant.compute_dtype=bfloat16 train.max_steps=60 train.eval_steps=30 train.lr=2e-3)
    e2e_kernels=(triton bitsandbytes)
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site:$PYTHONPATH"
else
    echo "no GPU: dry run on CPU (interpreter, small shapes)"
    export TRITON_INTERPRET=1
    slow=4  # the interpreter and 2 shared CPU cores: same steps, looser limits
    small=(--shapes 1024x1024)
    train=(--size small --steps 1 --warmup 1 --seq 64 --repeats 1)
    e2e=(train.device=cpu train.max_steps=2 train.eval_steps=2 data.max_examples=64 data.max_eval_examples=16)
    e2e_kernels=(bitsandbytes)
fi

step env 30 "$PY" -c "
import torch, triton, transformers, peft, bitsandbytes
print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')
print('triton', triton.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'bitsandbytes', bitsandbytes.__version__)
"
step tests 180 "$PY" -m pytest tests/kernels -q -p no:cacheprovider
step bench_dequant 90 "$PY" scripts/bench_dequant.py "${small[@]}"
step bench_gemv 60 "$PY" scripts/bench_gemv.py "${small[@]}"
step bench_train_step 200 "$PY" scripts/bench_train_step.py "${train[@]}"
for k in "${e2e_kernels[@]}"; do  # qtune train on .gpu/tiny once per kernel mode, then its summary
    step "train_$k" 90 "$PY" -m qtune.cli train --overwrite recipes/smollm2-135m-nf4.yaml model.path="$PWD/.gpu/tiny" \
        train.kernels="$k" train.output_dir="/tmp/qtune-e2e-$k" "${e2e[@]}"
    "$PY" -c "import json, sys; s = json.load(open(sys.argv[1])); print('summary', sys.argv[2], {k: s[k] for k in
        ('device', 'steps', 'eval_loss_before', 'eval_loss_after', 'tokens_per_s', 'peak_memory_bytes', 'peak_memory_kind')})" \
        "/tmp/qtune-e2e-$k/summary.json" "$k" | tee -a "$OUT/train_$k.log"
done

echo "== summary"
grep -h "^device\|best qtune\|ratio\|passed\|failed\|^summary" "$OUT"/tests.log "$OUT"/bench_*.log "$OUT"/train_*.log
exit $status
