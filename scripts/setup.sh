#!/usr/bin/env bash
# Create (or update) a virtual environment with edgeprune installed.
#   scripts/setup.sh [VENV_DIR] [extra pip args...]       default VENV_DIR: .venv
# torch is installed first as the CPU build (TORCH_SPEC, default torch==2.13.0): on this project's machines that
# version is a local CPU wheel; any torch range pip resolves by itself can pull a multi-GB CUDA build instead.
# Elsewhere, set TORCH_SPEC (and PIP_INDEX_URL/PIP_EXTRA_INDEX_URL) to a CPU build for your platform.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv}; shift || true
PY=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip -q --disable-pip-version-check)
"${PIP[@]}" install "$TORCH_SPEC" 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -c "import torch" 2>/dev/null || { echo "torch did not install ($TORCH_SPEC)" >&2; exit 1; }
"${PIP[@]}" install -e ".[test]" "$@" 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -c "import edgeprune, transformers, onnxruntime; print('edgeprune', edgeprune.__version__, '| transformers', transformers.__version__, '| onnxruntime', onnxruntime.__version__)"
