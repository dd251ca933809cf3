#!/usr/bin/env bash
# Train the default model memvos-lite from ImageNet: static-image stage, the 0.2 video stage, the 480p
# stage of 0.3 and the low-rate stage of 0.3.1 (MODEL_CARD.md), then export fp16 weights.
# Resumable: re-run the same command and each stage continues from its checkpoint.
# Usage: bash scripts/train_default.sh [extra `memvos train` args, e.g. --device cuda]
set -euo pipefail
cd "$(dirname "$0")/.."
MEMVOS=${MEMVOS:-.venv/bin/memvos}
$MEMVOS train --config configs/lite-static.json --out runs/lite-static --no-val "$@"
$MEMVOS train --config configs/lite-davis.json --out runs/lite-davis "$@"
$MEMVOS train --config configs/lite-davis480.json --out runs/lite-davis480 \
    --set init_weights=runs/lite-davis/last.pth "$@"
# 0.3.1: the low-rate stage from the 480p stage's best validation; exports its own best validation
$MEMVOS train --config configs/lite-davis480-lowlr.json --out runs/lite-davis480-lowlr \
    --export src/memvos/weights/memvos-lite.pth "$@"
