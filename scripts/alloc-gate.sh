#!/usr/bin/env bash
# The zero-allocation gate of the per-datagram path: runs the micro-benchmarks of bench/
# (ordo-one/benchmark, with its malloc counter) counting heap allocations only, over a few
# measured iterations each (STATSRELAY_ALLOC_GATE=1), and fails when the p90 of one measured
# iteration (a million lines, or a thousand datagrams) is above the committed threshold in
# bench/Thresholds/ (0 mallocs for every benchmark): one allocation per datagram fails it.
#
#   scripts/alloc-gate.sh [FILTER]      FILTER: a regular expression, e.g. 'DatagramProcessor.*'
#
# Builds bench/ in release first (its own .build, which links the relay's library); needs
# liburing-dev, as the relay does.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
cd bench
start=$SECONDS
swift build -c release --product UringRelayBenchmarks
built=$((SECONDS - start))
filter=()
[ $# -gt 0 ] && filter=(--filter "$1")
start=$SECONDS
status=0
STATSRELAY_ALLOC_GATE=1 swift package --disable-sandbox benchmark thresholds check --no-progress "${filter[@]}" || status=$?
echo "alloc-gate: build ${built}s, benchmarks $((SECONDS - start))s, exit ${status}"
if [ "$status" -ne 0 ]; then
    echo "!! an allocation on the per-line or per-datagram path (or the benchmarks failed): see the table above" >&2
fi
exit "$status"
