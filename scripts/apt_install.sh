#!/usr/bin/env bash
# Install one optional Debian package with apt-get unless FILE already exists. Never fails: memvos works
# without it (WHAT says what is lost). Non-interactive; root or passwordless sudo needed.
# Usage: bash scripts/apt_install.sh PACKAGE FILE WHAT
set -uo pipefail
pkg=$1 file=$2 what=$3
[ -e "$file" ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup: no apt-get here; install $pkg yourself ($what)" >&2
    exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "setup: not root and no sudo; cannot install $pkg ($what)" >&2
        exit 0
    fi
fi
echo "setup: installing $pkg with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null 2>&1; then
    $SUDO apt-get update -qq >/dev/null 2>&1 || echo "setup: apt-get update failed, trying the cached lists" >&2
    $SUDO apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null \
        || echo "setup: apt-get install $pkg failed ($what)" >&2
fi
exit 0
