#!/usr/bin/env bash
# Create .venv and install dymn-edge with every extra (export, runtime engines, tests).
# torch is pinned by .ci/constraints.txt to the CPU build so nothing swaps it for CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
pip install -q --upgrade pip setuptools wheel 2>&1 | grep -v '^WARNING: Location' || true
pip install -q torch==2.13.0 -c .ci/constraints.txt 2>&1 | grep -v '^WARNING: Location' || true
pip install -q -c .ci/constraints.txt -e ".[export,litert,onnx,bench,test]" 2>&1 | grep -v '^WARNING: Location' || true
python - <<'PY'
import torch, importlib.metadata as md
assert torch.__version__.startswith("2.13.0"), torch.__version__
assert "+cpu" in torch.__version__ or not torch.cuda.is_available(), "a CUDA torch slipped in"
print("dymn-edge", md.version("dymn-edge"), "| torch", torch.__version__)
PY
