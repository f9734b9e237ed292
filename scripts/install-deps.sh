#!/usr/bin/env bash
# Installs, on Debian 12 beyond the Swift toolchain, what the build and the tests need:
#   liburing-dev, pkg-config   the build (liburing's headers)
#   nftables, iproute2         firewall tests in network namespaces the tests create
#   prometheus                 promtool, which checks the /metrics exposition
#   systemd, strace            systemd-analyze verify of the unit and its system call filter
#   python3                    launchers that set limits and seccomp filters for start-up tests
# Tests whose tool is missing skip and say why; this makes sure none has to.
# The CI gates need nothing more: libFuzzer and the ASan/TSan runtimes ship with the Swift
# toolchain (lib/clang/*/lib/linux), as does the clang that builds scripts/tsan-mutex-shim.c
# (with the libc6-dev headers the toolchain itself requires); the allocation gate counts with
# ordo-one/benchmark's own malloc interposer, not jemalloc.
set -euo pipefail
wanted=(liburing-dev pkg-config nftables iproute2 prometheus systemd strace python3)
missing=()
for package in "${wanted[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "installing ${missing[*]} (apt-get)..." >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
