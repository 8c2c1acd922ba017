#!/usr/bin/env bash
# Distributed smoke test for qtune on one GPU (issue 14): `qtune train` on the tiny model (.gpu/tiny), NF4 base,
# bf16 compute, 30 steps, launched four ways, each followed by its summary (world_size, how the Trainer really
# wrapped the model, eval loss before/after, tokens/s, peak memory):
#   fsdp_nproc1      qtune train --nproc 1 with distributed.strategy=fsdp, quant.quant_storage=bfloat16 (FSDP-QLoRA,
#                    world size 1; --nproc re-runs itself through torchrun)
#   ddp_torchrun1    plain torchrun --nproc_per_node 1 -m qtune.cli train (the rank's own cuda:LOCAL_RANK placement)
#   fsdp_accelerate1 accelerate launch --num_processes 1 -m qtune.cli train, FSDP
#   fsdp_nproc2      2 processes sharing the one GPU: expected refused in one line (one GPU per rank; NCCL does
#                    not put two ranks on one device), logged so the refusal itself is checked
# Logs go to $OUT (one file per step). About two minutes on one H100/H200: run it with timeout_s=300.
#
# Prepare (on the CPU machine, once), as for scripts/gpu_check.sh:
#   scripts/prepare_gpu_site.sh                 # .gpu/site (bitsandbytes), .gpu/whl (pydantic), .gpu/tiny
#   # device tool: run(command="bash scripts/gpu_distributed_check.sh", carry=[".gpu"], timeout_s=300)
# Without a GPU (no nvidia-smi) it is a dry run on CPU: DDP over 2 gloo processes, and the FSDP recipe refused
# (FSDP needs CUDA), so the script can be checked anywhere.
source "$(dirname "$0")/gpu_env.sh"
status=0

step() {  # step NAME SECONDS EXPECT CMD...: run CMD under a time limit, log to $OUT/NAME.log; EXPECT ok|refused
    local name=$1 limit=$2 expect=$3
    shift 3
    echo "== $name: $*"
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "== $name exit $rc (expected $expect)" | tee -a "$OUT/$name.log"
    if [ "$expect" = ok ]; then [ "$rc" -eq 0 ] || status=1; else [ "$rc" -ne 0 ] || status=1; fi
}

summary() {  # summary NAME RUN_DIR
    "$PY" -c "import json, sys; s = json.load(open(sys.argv[1] + '/summary.json')); print('summary', sys.argv[2], {k: s.get(k) for k in
        ('device', 'world_size', 'distributed', 'global_batch_size', 'steps', 'eval_loss_before', 'eval_loss_after',
         'tokens_per_s', 'peak_memory_bytes')})" "$2" "$1" 2>&1 | tee -a "$OUT/$1.log"
}

common=(recipes/smollm2-135m-nf4.yaml model.path="$PWD/.gpu/tiny" quant.compute_dtype=bfloat16 train.lr=2e-3)
fsdp=(distributed.strategy=fsdp quant.quant_storage=bfloat16)
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site:$PYTHONPATH"
    common+=(train.device=cuda train.max_steps=30 train.eval_steps=15 train.save_steps=15)
    step env 30 ok "$PY" -c "
import torch, transformers, accelerate, peft, bitsandbytes
print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(), 'nccl', torch.cuda.nccl.version())
print('transformers', transformers.__version__, 'accelerate', accelerate.__version__, 'peft', peft.__version__, 'bitsandbytes', bitsandbytes.__version__)
"
    step fsdp_nproc1 120 ok "$PY" -m qtune.cli train --overwrite --nproc 1 "${common[@]}" "${fsdp[@]}" train.output_dir=/tmp/qtune-fsdp1
    summary fsdp_nproc1 /tmp/qtune-fsdp1
    step ddp_torchrun1 120 ok "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 -m qtune.cli train --overwrite \
        "${common[@]}" train.output_dir=/tmp/qtune-ddp1
    summary ddp_torchrun1 /tmp/qtune-ddp1
    step fsdp_accelerate1 120 ok "$PY" -m accelerate.commands.launch --num_processes 1 --num_machines 1 --mixed_precision no \
        --dynamo_backend no -m qtune.cli train --overwrite "${common[@]}" "${fsdp[@]}" train.output_dir=/tmp/qtune-fsdp-acc1
    summary fsdp_accelerate1 /tmp/qtune-fsdp-acc1
    step fsdp_nproc2 90 refused "$PY" -m qtune.cli train --overwrite --nproc 2 "${common[@]}" "${fsdp[@]}" \
        train.output_dir=/tmp/qtune-fsdp2
else
    echo "no GPU: dry run on CPU (DDP over 2 gloo processes; FSDP refused)"
    common+=(train.device=cpu quant.compute_dtype=float32 train.max_steps=2 data.max_examples=32 data.max_eval_examples=8)
    step ddp_nproc2_cpu 300 ok "$PY" -m qtune.cli train --overwrite --nproc 2 "${common[@]}" train.output_dir=/tmp/qtune-ddp2-cpu
    summary ddp_nproc2_cpu /tmp/qtune-ddp2-cpu
    step fsdp_cpu 60 refused "$PY" -m qtune.cli validate "${common[@]}" "${fsdp[@]/bfloat16/float32}"
fi

echo "== summary"
grep -h "^summary\|^error\|exit [0-9]* (expected" "$OUT"/*.log
exit $status
