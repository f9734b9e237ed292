#!/usr/bin/env bash
# Delivery accounting behind a real firewall (issue 12, defects 3 and 4): how many lines a relay
# loses, and what its counters say, when every Nth datagram to its backend is rejected.
#
#   bench/refusals.sh [--relay PATH] DRIVER HOOK EVERY [LINES]     # needs root, nft, ip
#
#   DRIVER  uring | portable
#   HOOK    input  (the receiving host refuses: ICMP port unreachable, as a closed port would)
#           output (a local firewall REJECT: the send fails with EPERM and an ICMP error is queued)
#   EVERY   reject every EVERY-th datagram (nft numgen inc mod EVERY == 0)
#   LINES   lines sent, 10 per datagram (default 20000)
#
# Runs in a network namespace of its own (unshare -n): a sink on 127.0.0.1:9001, the relay on
# 127.0.0.1:8125 with that one backend, the rule on the sink's port; prints what the sink got
# and the relay's output counters. Nothing outside the namespace is touched; every step is bounded.
set -euo pipefail
RELAY=$(cd "$(dirname "$0")/.." && pwd)/.build/release/statsrelay
if [ "${1:-}" = "--relay" ]; then RELAY=$2; shift 2; fi
DRIVER=$1 HOOK=$2 EVERY=$3 LINES=${4:-20000}
[ -x "$RELAY" ] || { echo "no relay at $RELAY: swift build -c release, or pass --relay" >&2; exit 1; }
export RELAY DRIVER HOOK EVERY LINES
exec unshare -n bash -euo pipefail -c '
T=$(mktemp -d); trap "rm -rf $T" EXIT
ip link set lo up
nft add table inet refusals
nft add chain inet refusals c "{ type filter hook $HOOK priority 0; }"
nft add rule inet refusals c udp dport 9001 numgen inc mod $EVERY == 0 reject
"$RELAY" sink --port 9001 --report-every 100s >"$T/sink" 2>&1 & SINK=$!
"$RELAY" run --io-backend "$DRIVER" --bind 127.0.0.1 --port 8125 --threads 1 --shutdown-timeout 5s \
  127.0.0.1:9001 2>"$T/relay" & RELAY_PID=$!
for _ in $(seq 100); do grep -q "listening" "$T/relay" && break; sleep 0.05; done
python3 - "$LINES" <<PY
import socket, sys, time
lines = int(sys.argv[1]); s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); n = 0; batch = 0
while n < lines:
    k = min(10, lines - n)
    s.sendto("\n".join(f"refusals.metric.{n + i}:{n + i}|c" for i in range(k)).encode(), ("127.0.0.1", 8125))
    n += k; batch += 1
    if batch % 20 == 0: time.sleep(0.001)
PY
kill -TERM $RELAY_PID; wait $RELAY_PID || true
sleep 0.5  # the sink reads what loopback already queued; it stops reading at SIGTERM
kill -TERM $SINK; wait $SINK || true
got=$(grep -oE "lines=[0-9]+" "$T/sink" | tail -1 | cut -d= -f2)
echo "driver=$DRIVER hook=$HOOK reject 1/$EVERY lines=$LINES sink_received=$got ($(( (LINES - got) * 1000 / LINES ))‰ lost)"
grep -E "^statsrelay\.backend\.(lines_sent|packets_sent|packets_refused|lines_dropped\.(refused|send_error)|send_errors|send_retries|send_refused|lines_doubted|lines_unconfirmed|lines_unconfirmed_at_exit|unattributed_losses)\{" "$T/relay" \
  | sed "s/{backend=\"127.0.0.1:9001\"}//; s/^statsrelay\.backend\.//" | tr "\n" " "; echo
'
