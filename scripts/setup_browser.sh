#!/usr/bin/env bash
# Install Debian's Chromium for the browser tests (tests/test_ui_browser.py) when /usr/bin/chromium is missing.
# Idempotent and non-interactive. Playwright drives this binary (executable_path); `playwright install`
# (which downloads its own browser build) is never used. If it cannot be installed, the test skips.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/apt_install.sh chromium /usr/bin/chromium "the browser test skips without it"
[ -x /usr/bin/chromium ] && echo "setup_browser: $(/usr/bin/chromium --version 2>/dev/null || echo chromium installed)" >&2
exit 0
