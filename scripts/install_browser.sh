#!/usr/bin/env bash
# Install Debian's headless-capable Chromium and its WebDriver for the browser test (tests/test_ui_browser.py).
# Needs root (CI runs as root). Does nothing when both are already installed. Usage: bash scripts/install_browser.sh
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "install_browser: root is needed to apt-get install chromium chromium-driver" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
echo "install_browser: $(/usr/bin/chromium --version)"
