#!/usr/bin/env bash
# Build .gpu/, everything scripts/gpu_all.sh needs on the GPU machine (bare image: torch, triton, transformers, peft,
# accelerate, rich, pyyaml, but no bitsandbytes, liger-kernel or pydantic; no internet), checked, within 64 MiB:
#   .gpu/site           bitsandbytes (its Python code and ONE CUDA library, the image torch's: --cuda, default 130)
#                       and liger-kernel, copied from this venv with their dist-info (transformers reads versions there)
#   .gpu/whl            pydantic's wheels for the image's Python (--python-version, default 3.12), pip-downloaded
#   .gpu/tiny           a tiny random Llama with SmolLM2's tokenizer (scripts/make_tiny_model.py)
#   .gpu/manifest.json  what was built for which Python and CUDA: scripts/gpu_env_check.py compares it there
#
#   scripts/prepare_gpu.sh [--python PATH] [--python-version 3.12] [--cuda 130]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=/work/main/.venv/bin/python PYVER=3.12 CUDA=130
while [ $# -gt 0 ]; do
    case $1 in
        --python) PY=$2; shift 2 ;;
        --python-version) PYVER=$2; shift 2 ;;
        --cuda) CUDA=$2; shift 2 ;;
        *) echo "error: unknown option $1 (--python PATH, --python-version X.Y, --cuda NNN)"; exit 2 ;;
    esac
done
rm -rf .gpu/site .gpu/whl .gpu/tiny .gpu/manifest.json && mkdir -p .gpu/site .gpu/whl
site_of() { "$PY" -c "import $1, os; print(os.path.dirname(os.path.dirname($1.__file__)))"; }
SITE=$(site_of bitsandbytes)
cp -r "$SITE/bitsandbytes" "$SITE"/bitsandbytes-*.dist-info .gpu/site/
LIB=libbitsandbytes_cuda$CUDA.so
[ -f ".gpu/site/bitsandbytes/$LIB" ] || { echo "error: $SITE/bitsandbytes has no $LIB (has: $(cd "$SITE/bitsandbytes" && ls libbitsandbytes_*.so | tr '\n' ' ')); pick --cuda from those"; exit 2; }
find .gpu/site/bitsandbytes -name 'libbitsandbytes_*.so' ! -name "$LIB" -delete
LIGER=$(site_of liger_kernel) || { echo "error: $PY has no liger-kernel: pip install -c constraints.txt liger-kernel"; exit 2; }
cp -r "$LIGER/liger_kernel" "$LIGER"/liger_kernel-*.dist-info .gpu/site/
find .gpu/site -name __pycache__ -type d -prune -exec rm -rf {} +
WHEELS=$("$PY" -m pip list --format=freeze 2>/dev/null | grep -iE '^(pydantic|pydantic[-_]core|annotated[-_]types|typing[-_]inspection|typing[-_]extensions)==')
[ "$(echo "$WHEELS" | wc -l)" -eq 5 ] || { echo "error: $PY lacks one of pydantic's packages: $WHEELS"; exit 2; }
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d .gpu/whl $WHEELS
PYTHONPATH=$PWD HF_HUB_OFFLINE=1 "$PY" scripts/make_tiny_model.py .gpu/tiny
[ -f .gpu/tiny/config.json ] && compgen -G ".gpu/tiny/tokenizer*" >/dev/null || { echo "error: .gpu/tiny is incomplete"; exit 2; }
printf '{"python": "%s", "cuda_lib": "%s", "wheels": "%s"}\n' "$PYVER" "$LIB" "$(ls .gpu/whl | tr '\n' ' ')" > .gpu/manifest.json
du -sh .gpu/site .gpu/whl .gpu/tiny
TOTAL=$(du -sm .gpu --exclude=out | cut -f1)
[ "$TOTAL" -le 60 ] || { echo "error: .gpu is $TOTAL MiB; the device call carries 64 MiB with the working tree"; exit 2; }
echo ".gpu: $TOTAL MiB, for Python $PYVER and CUDA $CUDA"
