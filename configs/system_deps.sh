#!/usr/bin/env bash
# System packages the tests need beyond pip, on Debian/Ubuntu (root or sudo):
#   libusb-1.0-0  open3d, which stock ns-export imports;
#   chromium      the viewer test opens nerfstudio's viewer in a real headless browser.
set -euo pipefail
missing=()
ldconfig -p | grep -q libusb-1.0 || missing+=(libusb-1.0-0)
command -v chromium >/dev/null || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && exit 0
sudo_=""; [ "$(id -u)" -eq 0 ] || sudo_=sudo
$sudo_ apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq "${missing[@]}" >/dev/null
