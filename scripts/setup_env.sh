#!/usr/bin/env bash
# Create ./.venv (if missing) and install mtl with the training, export, CPU runtime and dev extras.
# CPU torch 2.13.0 is installed explicitly first so pip never pulls a multi-GB CUDA build.
# (An NVIDIA machine uses `gpu` instead of `runtime`, plus `trt-cu12` or `trt-cu13`: README, "Install".)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip 2>&1 | grep -v -i warning || true
python -m pip install -q "torch==2.13.0" 2>&1 | grep -v -i warning || true
python -m pip install -q -e ".[train,export,runtime,dev]" 2>&1 | grep -v -i warning || true
python -c "import mtl, torch, onnxruntime; print('mtl', mtl.__version__, '| torch', torch.__version__, '| onnxruntime', onnxruntime.__version__)"
