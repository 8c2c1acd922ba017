#!/usr/bin/env bash
# GPU export check (issue 13): the streamed export of a Llama-2-7B-shaped model (random bf16 weights, random
# LoRA rank 16), GPTQ or AWQ 4-bit group 128 with 128 x 2048 calibration tokens on the GPU. Prints wall time,
# peak GPU memory (torch.cuda.max_memory_allocated) and peak host RSS. Goal: GPTQ <= 5 minutes.
#
# Prepare (on the CPU machine, once): scripts/prepare_gpu_site.sh   (.gpu/site: bitsandbytes; .gpu/whl: pydantic)
# Then, on the GPU machine, one format per command (each fits one 10-minute call; the random model, ~13 GB in
# /tmp, is built by the first and reused by the second while the machine stays warm):
#   device tool: run(command="bash scripts/gpu_export_check.sh gptq", carry=[".gpu"], timeout_s=560)
#                run(command="bash scripts/gpu_export_check.sh awq",  carry=[".gpu"], timeout_s=560)
# Logs: $OUT/export_<fmt>.log. Without a GPU it refuses (a 7B on 2 CPU cores is hours).
source "$(dirname "$0")/gpu_env.sh"
fmt=${1:-gptq}
SYN=${SYN:-/tmp/qtune-7b}

if ! (command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1); then
    echo "no GPU: this check needs one (see scripts/make_synthetic_run.py for a CPU-sized model)"; exit 2
fi
if [ -d .gpu/whl ] && [ ! -d /tmp/site ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl || exit 1
fi
export PYTHONPATH="/tmp/site:$PYTHONPATH"

if [ ! -f "$SYN/run/adapter/adapter_model.safetensors" ]; then
    echo "== building the 7B-shaped random run in $SYN"
    SECONDS=0
    "$PY" scripts/make_synthetic_run.py "$SYN" --shape 7b --device cuda --calib-rows 1500 2>&1 | tee "$OUT/build.log"
    [ "${PIPESTATUS[0]}" -eq 0 ] || exit 1
    echo "build: ${SECONDS} s" | tee -a "$OUT/build.log"
fi

echo "== streamed $fmt export, 128 x 2048 calibration tokens, on cuda"
"$PY" - "$SYN" "$fmt" <<'EOF' 2>&1 | tee "$OUT/export_$fmt.log"
import resource, sys, time
import torch
from rich.console import Console
from qtune.export.pipeline import export_run
from qtune.recipe.schema import ExportSection

syn, fmt = sys.argv[1], sys.argv[2]
s = ExportSection(formats=[fmt], group_size=128, device="cuda", fidelity=False,
                  calibration={"source": f"{syn}/calib.jsonl", "samples": 128, "seq_len": 2048})
print(torch.cuda.get_device_name(), "torch", torch.__version__)
t = time.perf_counter()
done = export_run(f"{syn}/run", s, out_root=f"{syn}/exports", console=Console(stderr=True))
wall = time.perf_counter() - t
import json
m = json.loads(open(f"{done[fmt]}/qtune_export.json").read())
print(f"RESULT {fmt}: export {wall:.0f} s (quantize {m['quantize_seconds']} s, calibration {m['calibration']}), "
      f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB allocated, "
      f"{torch.cuda.max_memory_reserved() / 2**30:.1f} GiB reserved, peak host RSS "
      f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB; goal GPTQ <= 300 s")
EOF
grep -h "^RESULT\|^build" "$OUT"/build.log "$OUT/export_$fmt.log" 2>/dev/null
