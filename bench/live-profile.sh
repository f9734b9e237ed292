#!/usr/bin/env bash
# A perf profile of the relay under a live load: one worker, W1 lines at RATE datagrams/s from
# 256 client sockets for 8 s, three benchsink sinks, all on 127.0.0.1 (relay port 28125, sinks
# 29001-29003); `perf record -g -e cpu-clock` on the relay for 5 s in the middle (run.py's
# --perf-record covers drains only). Then: ./profile-split.py OUT/live.IO.RATE.perf.data
#
#   bench/live-profile.sh RELAY [uring|portable] [RATE] [OUT]
#
# Needs perf (linux-perf) and the bench package built (swift build -c release in bench/).
set -euo pipefail
RELAY=${1:?usage: live-profile.sh RELAY [uring|portable] [RATE] [OUT]}
IO=${2:-uring}
RATE=${3:-50000}
OUT=${4:-/tmp/live-profile}
HERE=$(cd "$(dirname "$0")" && pwd)
BIN=$HERE/.build/release
mkdir -p "$OUT"
for tool in benchsink loadgen; do [ -x "$BIN/$tool" ] || { echo "no $BIN/$tool: swift build -c release in bench/" >&2; exit 64; }; done
command -v perf >/dev/null || { echo "missing perf (apt-get install linux-perf)" >&2; exit 64; }
"$BIN/benchsink" --ports 29001,29002,29003 --rcvbuf 8388608 --expect-lines 100000000 --idle-exit 4 --max-seconds 40 \
  > "$OUT/sink.$IO.json" 2> "$OUT/sink.err" &
SINK=$!
"$RELAY" --bind 127.0.0.1 --port 28125 --threads 1 --rcvbuf 268435456 --packet-len 1400 --flush-interval 10ms \
  --io-backend "$IO" --admin none 127.0.0.1:29001 127.0.0.1:29002 127.0.0.1:29003 > "$OUT/relay.$IO.log" 2>&1 &
RELAY_PID=$!
trap 'kill "$RELAY_PID" "$SINK" 2>/dev/null || true' EXIT
# Bounded waits for both to listen; a relay that could not start (the port taken) ends the run.
for _ in $(seq 100); do ss -uln | grep -q ':28125 ' && ss -uln | grep -q ':29003 ' && break; sleep 0.05; done
kill -0 "$RELAY_PID" 2>/dev/null || { echo "the relay did not start: $OUT/relay.$IO.log" >&2; exit 1; }
timeout 20 "$BIN/loadgen" --target 127.0.0.1:28125 --count $((RATE * 8)) --duration 8 --mode line --size 1400 \
  --names 10000 --batch 4 --sockets 256 --seed 1 --rate "$RATE" > "$OUT/loadgen.$IO.json" 2>&1 &
LOADGEN=$!
sleep 1
before=$(awk '{print $14 + $15}' "/proc/$RELAY_PID/stat")
perf record -g -e cpu-clock -F 4000 -p "$RELAY_PID" -o "$OUT/live.$IO.$RATE.perf.data" -- sleep 5 2> "$OUT/perf.err"
after=$(awk '{print $14 + $15}' "/proc/$RELAY_PID/stat")
echo "relay CPU in the 5 s sampled: $(( (after - before) * 1000 / $(getconf CLK_TCK) )) ms (sampling adds to it)"
wait "$LOADGEN"
kill -TERM "$RELAY_PID"
status=0; wait "$RELAY_PID" || status=$?
echo "relay exited $status"
wait "$SINK" || true
trap - EXIT
echo "profile: $OUT/live.$IO.$RATE.perf.data  (./profile-split.py it)"
