# Sourced by scripts/gpu_*.sh: strict mode, the repo root as working directory, $OUT for logs, the
# carried bitsandbytes site (.gpu/site, scripts/prepare_gpu_site.sh) first on PYTHONPATH, $PY.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[1]}")/.."
OUT=${OUT:-$PWD/.gpu/out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/.gpu/site:$PWD" PYTHONUNBUFFERED=1
PY=${PY:-python3}
