#!/usr/bin/env bash
# Installs Debian's Chromium and ChromeDriver for the viewer's browser tests, once.
# The tests skip themselves (with a message) where neither is installed and this step cannot run.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install_browser: not root or no apt-get; browser tests will be skipped" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq chromium chromium-driver >/dev/null
echo "install_browser: installed $(chromium --version)"
