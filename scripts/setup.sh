#!/usr/bin/env bash
# Create .venv and install memvos into it (idempotent; re-installs when pyproject/constraints change).
# torch is pinned through constraints.txt so pip never pulls the multi-GB CUDA build.
# Usage: bash scripts/setup.sh [EXTRAS]   e.g. EXTRAS=dev
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=${1:-}
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv" >&2
    "$PY" -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip >&2
fi
spec="."
[ -n "$EXTRAS" ] && spec=".[$EXTRAS]"
stamp=".venv/.memvos-installed-${EXTRAS:-base}"
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "setup: installing memvos$([ -n "$EXTRAS" ] && echo "[$EXTRAS]") into .venv (torch pinned by constraints.txt)" >&2
    .venv/bin/python -m pip install -q -c constraints.txt -e "$spec" >&2
    echo "$want" > "$stamp"
fi
# tcmalloc: the memvos command preloads it for itself (src/memvos/allocator.py); 1.05-1.4x faster here.
bash scripts/apt_install.sh libtcmalloc-minimal4 /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 \
    "memvos then runs on glibc malloc, about 1.2x slower"
