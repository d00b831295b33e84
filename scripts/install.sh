#!/usr/bin/env bash
# Create .venv in the repo root and install the project with every extra and the test tools.
# torch is pinned here (and only here) so pip never resolves it: torch 2.13.0 (CPU) breaks torchvision
# and so timm; torch 2.14.1 + torchvision 0.29.1 work with timm, on CPU and GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_PINS=(torch==2.14.1 torchvision==0.29.1)
PYTHON="${PYTHON:-python3}"
stamp=.venv/.installed
want="$(cat pyproject.toml scripts/install.sh | sha256sum | cut -c1-16)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "install: .venv is up to date"
    exit 0
fi
[[ -x .venv/bin/python ]] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "${TORCH_PINS[@]}" -e ".[all,test]"
echo "$want" > "$stamp"
echo "install: done"
