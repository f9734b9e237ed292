#!/usr/bin/env bash
# Installs what the build needs on Debian 12 beyond the Swift toolchain: liburing's headers.
set -euo pipefail
if dpkg-query -W -f='${Status}' liburing-dev 2>/dev/null | grep -q "install ok installed"; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "installing liburing-dev (apt-get)..." >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq liburing-dev pkg-config >/dev/null
