#!/usr/bin/env bash
# The test command: sets up .venv with the dev extras, then lint + the test suite.
# Real-data tests read ../shared (DAVIS, CC BY-NC; never copied here) and skip when it is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
bash scripts/setup_browser.sh  # Debian chromium for tests/test_ui_browser.py
.venv/bin/ruff check src tests scripts benchmarks
OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} .venv/bin/python -m pytest -q "$@"
