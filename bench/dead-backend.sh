#!/usr/bin/env bash
# W2 drain with and without a dead backend: does a worker keep its pace for the live backends
# while one answers every send with ICMP port unreachable?
#
#   cd bench && ./dead-backend.sh [runs]      # needs root, ports 18125 and 9001-9003 free
#
# The relay always has backends 127.0.0.1:9001-9003; the sink listens on all three ("live") or
# only on 9001-9002 ("dead"). Prints the drain time and what the live sinks received, and the
# relay's send-error counters. Traffic goes to 127.0.0.1 only; every step is bounded.
set -euo pipefail
cd "$(dirname "$0")"
RUNS=${1:-3}
RELAY=../.build/release/statsrelay
LOADGEN=.build/release/loadgen
SINK=.build/release/benchsink
[ -x "$RELAY" ] || { echo "build the relay first: swift build -c release --static-swift-stdlib" >&2; exit 1; }
if [ ! -x "$LOADGEN" ] || [ ! -x "$SINK" ]; then
  swift build -c release --product loadgen >/dev/null
  swift build -c release --product benchsink >/dev/null
fi
LOG=$(mktemp -d)
trap 'rm -rf "$LOG"' EXIT

one() {
  local ports=$1 label=$2
  "$SINK" --ports "$ports" --max-seconds 30 --idle-exit 1 >"$LOG/sink.json" 2>/dev/null &
  local sink=$!
  "$RELAY" --bind 127.0.0.1 --port 18125 --threads 1 --rcvbuf 268435456 \
    127.0.0.1:9001 127.0.0.1:9002 127.0.0.1:9003 2>"$LOG/relay.log" &
  local relay=$!
  for _ in $(seq 100); do grep -q "listening on" "$LOG/relay.log" && break; sleep 0.05; done
  kill -STOP "$relay"
  "$LOADGEN" --target 127.0.0.1:18125 --count 60000 --mode packed --sockets 16 >/dev/null
  kill -CONT "$relay"
  wait "$sink"
  kill -TERM "$relay"; wait "$relay"
  python3 - "$LOG/sink.json" "$label" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); t = d["totals"]; span = d["last_arrival"] - d["first_arrival"]
print(f"{sys.argv[2]:5} drain {span:.3f} s, live sinks got {t['lines']} lines ({t['lines'] / span / 1e6:.2f} M lines/s)")
PY
  grep -E '^statsrelay\.(lines_forwarded|lines_dropped\.send_error) |send_refused\{backend="127.0.0.1:9003"' "$LOG/relay.log" | tr '\n' ' '
  echo
}

echo "kernel $(uname -r), $(date -u +%FT%TZ), W2 drain 60000 datagrams, relay --threads 1"
for _ in $(seq "$RUNS"); do
  one 9001,9002,9003 live
  one 9001,9002 dead
done
