#!/usr/bin/env bash
# Build .gpu/site: the bitsandbytes that scripts/gpu_check.sh needs on the GPU image (which has torch, triton,
# transformers, peft, accelerate, pytest, but not bitsandbytes). Copies this venv's bitsandbytes package and its
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
find .gpu/site -name __pycache__ -type d -prune -exec rm -rf {} +
du -sh .gpu/site
