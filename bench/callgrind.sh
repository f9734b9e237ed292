#!/usr/bin/env bash
# User-space instructions per line of the release relay under callgrind, both io drivers, W1 and
# W2 drains, one worker: the CI gate of issue 16 (see bench/README.md, "Instructions per line").
#
#   bench/callgrind.sh [--relay PATH] [--check | --update [--lower-only]] [--repeat K] [--annotate 10]
#                      [--n-w1 200000] [--n-w2 20000] [--drivers uring,portable] [--workloads w1,w2]
#                      [--json FILE] [--keep] [--native] [--stall-seconds 120]
#
#   --check    exit 1 when a driver x workload figure is more than 5 % above
#              bench/Thresholds/instructions-per-line.json (exit 2: a run was invalid)
#   --update   write the figures measured into that file (the maximum over --repeat runs)
#   --lower-only  with --update: only the figures that went down are written, the rest kept
#   --native   the relay without valgrind, no figures: whether every drain delivers every line
#              (a stall reports where the missing lines were; see bench/README.md)
#   --stall-seconds  a drain with no progress this long is retried once, then fails (default 120)
#
# Needs root, valgrind (callgrind_control, callgrind_annotate), objcopy, python3 >= 3.9 and unshare.
# Runs in a network namespace of its own (unshare -n): relay on 127.0.0.1:18125, sinks on
# 127.0.0.1:9001-9003, and RcvbufErrors in /proc/net/snmp counts only this run. Nothing outside
# the namespace is touched; every wait is bounded. One run of all four: about 80 s on 2 cores.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
RELAY=$ROOT/.build/release/statsrelay
ARGS=()
while [ $# -gt 0 ]; do
  case $1 in
    --relay) RELAY=$2; shift 2 ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
[ -x "$RELAY" ] || { echo "no relay at $RELAY: swift build -c release --product statsrelay, or pass --relay" >&2; exit 64; }
for tool in valgrind callgrind_control callgrind_annotate objcopy python3 unshare; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install valgrind binutils python3 util-linux)" >&2; exit 64; }
done
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$(git -C "$ROOT" status --porcelain -- Sources Package.swift 2>/dev/null | head -1)
SOURCES=$(git -C "$ROOT" log -1 --format=%h -- Sources Package.swift 2>/dev/null || echo unknown)
META=$(printf '{"commit": "%s%s", "sources_commit": "%s", "relay": "%s", "command": "bench/callgrind.sh %s"}' \
  "$COMMIT" "${DIRTY:+ (Sources modified)}" "$SOURCES" "$RELAY" "${ARGS[*]:-}")
exec unshare -n bash -c 'ip link set lo up && exec python3 "$0" "$@"' "$HERE/callgrind.py" \
  --relay "$RELAY" --thresholds "$HERE/Thresholds/instructions-per-line.json" --meta "$META" ${ARGS[@]+"${ARGS[@]}"}
