#!/usr/bin/env bash
# Runs every test: unit tests and the kernel tests on loopback (skipped, and reported, where
# io_uring is unavailable). Installs liburing-dev first if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
swift build --build-tests
swift test --skip-build "$@"
