#!/usr/bin/env bash
# Install Debian's headless-capable chromium for tests/test_browser.py, only if it is missing.
# Idempotent: does nothing when /usr/bin/chromium exists. Never downloads a browser from elsewhere.
set -euo pipefail

CHROMIUM=/usr/bin/chromium

if [ -x "$CHROMIUM" ]; then
    echo "install_browser: $CHROMIUM present ($("$CHROMIUM" --version 2>/dev/null || echo 'version unknown'))"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_browser: $CHROMIUM is missing and apt-get is not available" >&2
    exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "install_browser: $CHROMIUM is missing; run as root: apt-get install -y chromium" >&2
        exit 1
    fi
fi

echo "install_browser: installing chromium with apt-get"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium
"$CHROMIUM" --version
