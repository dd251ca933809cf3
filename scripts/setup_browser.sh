#!/usr/bin/env bash
# Install Debian's Chromium for the browser tests (tests/test_ui_browser.py) when /usr/bin/chromium is missing.
# Idempotent and non-interactive. Playwright drives this binary (executable_path); `playwright install`
# (which downloads its own browser build) is never used. If it cannot be installed, the test skips.
set -euo pipefail
[ -x /usr/bin/chromium ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup_browser: no apt-get here; install chromium yourself (the browser test skips without it)" >&2
    exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "setup_browser: not root and no sudo; cannot install chromium (the browser test skips)" >&2
        exit 0
    fi
fi
echo "setup_browser: installing chromium with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null || echo "setup_browser: apt-get update failed, trying the cached lists" >&2
if ! $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null; then
    echo "setup_browser: apt-get install chromium failed (the browser test skips)" >&2
    exit 0
fi
echo "setup_browser: $(/usr/bin/chromium --version 2>/dev/null || echo chromium installed)" >&2
