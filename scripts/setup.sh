#!/usr/bin/env bash
# Create .venv with meissonic installed (editable). Usage: bash scripts/setup.sh [EXTRAS], e.g. "dev" or "dev,train".
# On a machine without an NVIDIA GPU, torch's CPU build is installed first, so that pip does not pull a
# multi-GB CUDA build; on a GPU machine the ordinary torch wheel is used. MEISSONIC_TORCH_INDEX may name a
# package index to take torch from (e.g. the CPU wheel index of PyTorch).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python3 -m venv .venv
py=.venv/bin/python
if ! "$py" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: NVIDIA GPU found, installing the default torch build"
  else
    echo "setup: no NVIDIA GPU, installing torch's CPU build"
    "$py" -m pip install --quiet "torch==2.13.0" ${MEISSONIC_TORCH_INDEX:+--index-url "$MEISSONIC_TORCH_INDEX"}
  fi
fi
"$py" -m pip install --quiet --editable ".${extras:+[$extras]}"
echo "setup: done (.venv/bin/meissonic)"
