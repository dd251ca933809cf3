#!/usr/bin/env bash
# Train the default model memvos-lite: static-image stage, then the video stage, then export fp16 weights.
# Resumable: re-run the same command and each stage continues from its checkpoint.
# Usage: bash scripts/train_default.sh [extra `memvos train` args, e.g. --device cuda]
set -euo pipefail
cd "$(dirname "$0")/.."
MEMVOS=${MEMVOS:-.venv/bin/memvos}
$MEMVOS train --config configs/lite-static.json --out runs/lite-static --no-val "$@"
$MEMVOS train --config configs/lite-davis.json --out runs/lite-davis --export src/memvos/weights/memvos-lite.pth "$@"
