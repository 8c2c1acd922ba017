#!/usr/bin/env bash
# The one GPU command: every GPU claim of qtune measured in one device call (scripts/gpu_all.py says what and how).
# Prepare once on the CPU machine, then one call:
#   scripts/prepare_gpu.sh                    # .gpu/: bitsandbytes + liger (site), pydantic wheels, the tiny model
#   # device tool: run(command="bash scripts/gpu_all.sh", carry=[".gpu"], timeout_s=580)
# A second call for what the first skipped:  bash scripts/gpu_all.sh --only STEP...
# Results (summary.json, summary.md, logs.tar.gz) go to $OUT; --tiny rehearses the same steps on CPU.
set -uo pipefail
cd "$(dirname "$0")/.."
START=$SECONDS
PY=${PY:-python3}
if [ -d .gpu/whl ] && compgen -G ".gpu/whl/*.whl" >/dev/null; then  # pydantic: the GPU image lacks it
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/qtune-site \
        .gpu/whl/*.whl || { echo "error: .gpu/whl: the carried wheels do not install on $("$PY" -V)"; exit 2; }
fi
export PYTHONPATH="$PWD/.gpu/site:/tmp/qtune-site:$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
DEADLINE=${DEADLINE:-540}
exec "$PY" scripts/gpu_all.py --deadline "$((DEADLINE - (SECONDS - START)))" "$@"
