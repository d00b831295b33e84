#!/usr/bin/env bash
# Create a virtual environment (.venv in the repo root by default) and install the project.
# The same script installs CI, the demo and the Docker images, so each of them exercises it.
#   EXTRAS   extras to install (default: all,test; the images pass only what they need)
#   VENV     where the environment goes (default: .venv)
#   FAISS    replace faiss-cpu by this package afterwards (the GPU image: faiss-gpu-cu12)
#   EDITABLE 1 (default) for `pip install -e`, 0 for a plain install (images)
#   TORCH_PINS        the torch requirements, space-separated (default: torch==2.14.1 torchvision==0.29.1);
#                     the CPU image passes torch==2.14.1 alone, or a local wheel's path
#   TORCH_INDEX_URL   an extra index for them (the CPU image: https://download.pytorch.org/whl/cpu)
#   TORCH_FIND_LINKS  a wheel folder or page for them (pip --find-links)
# torch is pinned here, in the same pip command as everything that depends on it, so pip never resolves
# it: torch 2.13.0 (CPU) breaks torchvision and so timm; torch 2.14.1 + torchvision 0.29.1 work with timm.
set -euo pipefail
cd "$(dirname "$0")/.."
read -r -a torch_pins <<< "${TORCH_PINS:-torch==2.14.1 torchvision==0.29.1}"
torch_from=()
if [[ -n "${TORCH_INDEX_URL:-}" ]]; then torch_from+=(--extra-index-url "$TORCH_INDEX_URL"); fi
if [[ -n "${TORCH_FIND_LINKS:-}" ]]; then torch_from+=(--find-links "$TORCH_FIND_LINKS"); fi
PYTHON="${PYTHON:-python3}"
EXTRAS="${EXTRAS:-all,test}"
VENV="${VENV:-.venv}"
FAISS="${FAISS:-}"
EDITABLE="${EDITABLE:-1}"
stamp="$VENV/.installed"
want="$( (cat pyproject.toml scripts/install.sh; echo "$EXTRAS $FAISS $EDITABLE ${torch_pins[*]} ${torch_from[*]+"${torch_from[*]}"}") | sha256sum | cut -c1-16)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "install: $VENV is up to date"
    exit 0
fi
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
target=".[$EXTRAS]"
[[ "$EDITABLE" == 1 ]] && target=(-e "$target") || target=("$target")
"$VENV/bin/python" -m pip install --quiet ${torch_from[@]+"${torch_from[@]}"} "${torch_pins[@]}" "${target[@]}"
if [[ -n "$FAISS" ]]; then
    "$VENV/bin/python" -m pip uninstall --quiet --yes faiss-cpu
    "$VENV/bin/python" -m pip install --quiet ${torch_from[@]+"${torch_from[@]}"} "${torch_pins[@]}" "$FAISS"
fi
echo "$want" > "$stamp"
echo "install: done ($VENV, extras: $EXTRAS)"
