#!/usr/bin/env bash
# Set up a virtual environment with torch and nested_kernels (editable, with the compiled
# extension and the test extras). Idempotent. Usage: bash scripts/bootstrap.sh [venv-dir]
#   NESTED_KERNELS_BUILD=cuda|cpu|none   what to compile (default: cuda when nvcc is found)
#   PYTHON=python3.x                     interpreter for a new venv (default: python3)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$VENV"
fi
PY="$VENV/bin/python"
# torch first: the extension builds against the torch of this venv (no build isolation).
"$PY" -m pip install --quiet --upgrade pip setuptools wheel
"$PY" -m pip install --quiet "torch>=2.5" ninja pybind11
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then
    export CUDA_HOME=/usr/local/cuda
fi
"$PY" -m pip install --quiet --no-build-isolation -e ".[test,triton]"
"$VENV/bin/nested-kernels" info
