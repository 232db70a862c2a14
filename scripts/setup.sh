#!/usr/bin/env bash
# Set up everything unetgraph needs in .venv at the repository root. Safe to re-run.
#  - graphviz's `dot` (Debian package), if missing and we may install it;
#  - torch pinned to the build in constraints.txt first (never an unpinned, multi-GB CUDA resolve);
#  - the package in editable mode with its dev extras, every pip call constrained.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v dot >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq graphviz >/dev/null) \
            || echo "setup: could not install graphviz; drawing to SVG/PNG will ask for it" >&2
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        (sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq graphviz >/dev/null) \
            || echo "setup: could not install graphviz; drawing to SVG/PNG will ask for it" >&2
    else
        echo "setup: graphviz's 'dot' is missing; install it (apt-get install graphviz) to render figures" >&2
    fi
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
"${PIP[@]}" install -c constraints.txt "torch==2.14.1" "torchvision==0.29.1" 2>&1 | grep -v "is ignored" || true
.venv/bin/python -c "import torch" || { echo "setup: torch failed to install" >&2; exit 1; }
"${PIP[@]}" install -c constraints.txt -e ".[dev]" 2>&1 | grep -vE "is ignored|BuildBackendWarning|^ *$|!!|\*\*\*|Please be careful|name as your package|with strategy" || true
.venv/bin/python -c "import unetgraph, diffusers, monai, onnxruntime, graphviz, timm, torchvision, segmentation_models_pytorch, safetensors" \
    || { echo "setup: the package or a dev dependency failed to install" >&2; exit 1; }
echo "setup: .venv ready ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
