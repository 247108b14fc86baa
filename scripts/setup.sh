#!/usr/bin/env bash
# Create .venv with everything the project needs: the CPU build of torch first (a plain `pip install torch`
# would pull a multi-GB CUDA build), then the project with its test, dashboard and reference (LightGBM) extras.
# Idempotent and quick when done.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install --quiet "torch==2.13.0" \
    || .venv/bin/python -m pip install --quiet "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
fi
.venv/bin/python -m pip install --quiet -e ".[test,dashboard,reference]"
