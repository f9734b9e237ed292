#!/usr/bin/env bash
# A first look at statsrelay on this machine: installs liburing-dev if missing, builds in
# release mode, starts three local sinks (stand-in StatsD backends) and the relay in front of
# them, sends StatsD traffic over UDP for a few seconds, then stops the relay with SIGTERM
# and shows what each sink received and the relay's own counters.
#
#   ./scripts/demo.sh            # about 5 seconds of traffic
#   DEMO_SECONDS=30 ./scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
swift build -c release --static-swift-stdlib 2>&1 | tail -n 1
BIN=.build/release/statsrelay
PORT=${DEMO_PORT:-8125}
SECONDS_TO_RUN=${DEMO_SECONDS:-5}
LOG=$(mktemp -d)
trap 'kill $RELAY $SINK 2>/dev/null || true; rm -rf "$LOG"' EXIT

echo "== backends: three sinks on 127.0.0.1:9101-9103 (each prints the lines it receives)"
"$BIN" sink --port 9101 --port 9102 --port 9103 --print --report-every 0s >"$LOG/sink.out" 2>"$LOG/sink.err" &
SINK=$!
echo "== relay: 127.0.0.1:$PORT -> 9101 9102 9103"
"$BIN" --bind 127.0.0.1 --port "$PORT" --threads 1 127.0.0.1:9101 127.0.0.1:9102 127.0.0.1:9103 2>"$LOG/relay.err" &
RELAY=$!
for _ in $(seq 1 100); do
  grep -q "listening on" "$LOG/relay.err" 2>/dev/null && break
  if ! kill -0 "$RELAY" 2>/dev/null; then cat "$LOG/relay.err"; exit 1; fi
  sleep 0.1
done
grep -E "io_backend=|listening on" "$LOG/relay.err"

echo "== sending StatsD lines to 127.0.0.1:$PORT for ${SECONDS_TO_RUN}s"
end=$((SECONDS + SECONDS_TO_RUN))
sent=0
while [ $SECONDS -lt $end ]; do
  for svc in web api worker; do
    printf 'demo.%s.requests:1|c\ndemo.%s.latency:%d|ms|@0.5\ndemo.%s.queue:%d|g\n' \
      "$svc" "$svc" $((RANDOM % 200)) "$svc" $((RANDOM % 50)) >/dev/udp/127.0.0.1/"$PORT"
    sent=$((sent + 3))
  done
  printf 'this line has no colon\n' >/dev/udp/127.0.0.1/"$PORT"
  sleep 0.2
done
echo "sent $sent valid lines and $((sent / 9)) malformed ones"

kill -TERM "$RELAY"; wait "$RELAY" || true
kill -INT "$SINK"; wait "$SINK" || true
echo "== a few lines as the sinks received them (port, line):"
head -n 9 "$LOG/sink.out"
echo "== what each sink received:"
grep final "$LOG/sink.err"
echo "== the relay's counters at exit (non-zero):"
grep -E '^statsrelay\.' "$LOG/relay.err" | awk '$2 != 0'
