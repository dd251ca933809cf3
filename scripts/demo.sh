#!/usr/bin/env bash
# The main job: segment the shipped example clip with the shipped default weights.
# Writes out/demo/horse-and-coin/<frame>.png (palette masks) and out/demo/horse-and-coin.mp4 (overlay),
# then scores the masks against the clip's exact ground truth with the DAVIS metrics.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
clip=examples/horse-and-coin
.venv/bin/memvos segment "$clip/frames" --mask "$clip/mask.png" --out out/demo/horse-and-coin \
    --overlay out/demo/horse-and-coin.mp4 --overwrite "$@"
mkdir -p out/demo-gt && ln -sfn "$(pwd)/$clip/gt" out/demo-gt/horse-and-coin
.venv/bin/memvos eval out/demo --gt out/demo-gt --sequences horse-and-coin --out out/demo-eval
