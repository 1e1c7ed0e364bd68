#!/usr/bin/env bash
# Create ./.venv (if missing) and install mtl with the training, export, CPU runtime, fast (numba) and dev
# extras, plus fleet (ray) and openvino so their tests run here too (neither is needed to use mtl).
# CPU torch 2.13.0 is installed explicitly first so pip never pulls a multi-GB CUDA build.
# (An NVIDIA machine uses `gpu` instead of `runtime`, plus `trt-cu12` or `trt-cu13`: README, "Install".)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate

# pip quietly (its warnings filtered out), but a failed install stops the script: with pipefail the
# pipeline's status is pip's, and the filter itself never fails (grep exits 1 when it prints nothing)
pip_install() {
  if ! python -m pip install -q "$@" 2>&1 | { grep -v -i warning || true; }; then
    echo "error: scripts/setup_env.sh: pip install $* failed (see pip's output above)" >&2
    exit 1
  fi
}

pip_install --upgrade pip
pip_install "torch==2.13.0"
pip_install -e ".[train,export,runtime,fast,dev,fleet,openvino]"
python -c "import mtl, torch, onnxruntime; print('mtl', mtl.__version__, '| torch', torch.__version__, '| onnxruntime', onnxruntime.__version__)"
