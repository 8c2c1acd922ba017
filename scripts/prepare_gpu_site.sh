#!/usr/bin/env bash
# Build .gpu/: what scripts/gpu_check.sh needs on the GPU image (which has torch, triton, transformers, peft,
# accelerate, pytest, rich, pyyaml, but not bitsandbytes or pydantic):
#   .gpu/site  bitsandbytes, and liger-kernel when the given Python has it;
#   .gpu/whl   pydantic's wheels for Python 3.12 (the recipe schema), installed there into /tmp/site;
#   .gpu/tiny  a tiny random Llama with SmolLM2's tokenizer, trained end to end by `qtune train` there.
# .gpu/site: Copies this venv's bitsandbytes package and its
# dist-info (transformers looks the version up there), keeping only libbitsandbytes_cuda130.so (the image's
# torch is built for CUDA 13.0) and dropping __pycache__ (the image's Python is 3.12). The package's Python
# code is version-independent; the CUDA library is loaded with ctypes. Result: ~5 MB, git-ignored.
#
#   scripts/prepare_gpu_site.sh [path/to/python]        # default /work/main/.venv/bin/python
set -euo pipefail
PY=${1:-/work/main/.venv/bin/python}
SITE=$("$PY" -c 'import bitsandbytes, os; print(os.path.dirname(os.path.dirname(bitsandbytes.__file__)))')
rm -rf .gpu/site && mkdir -p .gpu/site
cp -r "$SITE/bitsandbytes" "$SITE"/bitsandbytes-*.dist-info .gpu/site/
find .gpu/site/bitsandbytes -name 'libbitsandbytes_*.so' ! -name 'libbitsandbytes_cuda130.so' -delete
# liger-kernel (train.cross_entropy / rms_norm / rope: liger; the fast mode of bench_train_step.py): pure Python + Triton
if LIGER=$("$PY" -c 'import liger_kernel, os; print(os.path.dirname(os.path.dirname(liger_kernel.__file__)))' 2>/dev/null); then
    cp -r "$LIGER/liger_kernel" "$LIGER"/liger_kernel-*.dist-info .gpu/site/
else
    echo "note: $PY has no liger-kernel (pip install -c constraints.txt liger-kernel); the fast mode will not run" >&2
fi
find .gpu/site -name __pycache__ -type d -prune -exec rm -rf {} +

rm -rf .gpu/whl && mkdir -p .gpu/whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 -d .gpu/whl \
    $("$PY" -m pip list --format=freeze 2>/dev/null | grep -iE '^(pydantic|pydantic[-_]core|annotated[-_]types|typing[-_]inspection|typing[-_]extensions)==')
rm -rf .gpu/tiny && PYTHONPATH=$PWD "$PY" scripts/make_tiny_model.py .gpu/tiny
du -sh .gpu/*
