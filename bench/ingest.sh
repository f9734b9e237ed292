#!/usr/bin/env bash
# Ingest throughput and CPU per line by transport: COUNT one-line datagrams from one sender
# (bench/ingest-sender.c) to the relay's UDP listener and to its Unix datagram socket
# (--unix-socket), and as newline-ended lines over one TCP connection to --tcp-port, at each
# --threads, on each io driver; backend: `statsrelay sink` on loopback.
#
#   bench/ingest.sh [COUNT] [THREADS...]        default: 2000000 lines, threads 1 2
#   STATSRELAY=.build/release/statsrelay        the relay binary (build it with -c release)
#   DRIVERS="uring portable"  TRANSPORTS="udp unix tcp"
#
# A Unix datagram socket queues at most net.unix.max_dgram_qlen datagrams (default 10) from
# senders before they wait: measure with it raised in a private network namespace, e.g.
#   unshare -n sh -c 'ip link set lo up; sysctl -qw net.unix.max_dgram_qlen=1024; bench/ingest.sh'
#
# Prints one row per run: driver, transport, threads, lines received by the relay, sender
# seconds, lines/s (received / sender seconds), relay CPU ns per line (utime+stime from
# /proc/PID/stat over the run, settling included) and datagrams the kernel dropped.
# A Unix sender blocks while the socket's queue is full, so it never loses a line and its
# rate is the relay's; a UDP sender does not wait: what the relay cannot take is dropped by
# the kernel (dropped column), and lines/s counts what arrived. Short, bounded runs; loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-2000000}
shift || true
threads=("$@")
[ ${#threads[@]} -eq 0 ] && threads=(1 2)
relay=${STATSRELAY:-.build/release/statsrelay}
drivers=${DRIVERS:-uring portable}
transports=${TRANSPORTS:-udp unix tcp}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
cc -O2 -o "$work/sender" bench/ingest-sender.c
sink_port=$((20000 + RANDOM % 20000))
"$relay" sink --bind 127.0.0.1 --port "$sink_port" --report-every 0 >/dev/null 2>&1 &
ticks=$(getconf CLK_TCK)
cpu_of() { awk -v t="$ticks" '{ printf "%.0f\n", ($14 + $15) * 1e9 / t }' "/proc/$1/stat"; }
counter() { grep "^$1 " "$2" | tail -1 | awk '{print $2}'; }
echo "kernel $(uname -r), $(nproc) CPUs, load $(cut -d' ' -f1 /proc/loadavg), net.unix.max_dgram_qlen $(cat /proc/sys/net/unix/max_dgram_qlen), $count lines of ~14 bytes, one per datagram"
printf "%-9s %-5s %-7s %10s %8s %11s %11s %9s\n" driver trans threads received seconds lines/s cpu_ns/line dropped
for driver in $drivers; do
  for transport in $transports; do
    for n in "${threads[@]}"; do
      port=$((20000 + RANDOM % 20000))
      tcp_port=$((port + 1))
      path="$work/relay.sock"
      "$relay" run --admin none --io-backend "$driver" --bind 127.0.0.1 --port "$port" --unix-socket "$path" --tcp-port "$tcp_port" \
        --threads "$n" --rcvbuf 64M "127.0.0.1:$sink_port" 2>"$work/log" &
      pid=$!
      for _ in $(seq 100); do grep -q "listening on" "$work/log" && break; sleep 0.1; done
      before=$(cpu_of $pid)
      if [ "$transport" = unix ]; then
        seconds=$("$work/sender" unix "$path" "$count")
      elif [ "$transport" = tcp ]; then
        seconds=$("$work/sender" tcp 127.0.0.1 "$tcp_port" "$count")
      else
        seconds=$("$work/sender" udp 127.0.0.1 "$port" "$count")
      fi
      sleep 0.5  # the relay takes what is still queued
      after=$(cpu_of $pid)
      kill -TERM $pid
      wait $pid || true
      received=$(counter statsrelay.lines_received "$work/log")
      dropped=$(counter statsrelay.datagrams_dropped.kernel "$work/log")
      awk -v d="$driver" -v t="$transport" -v n="$n" -v r="$received" -v s="$seconds" -v c=$((after - before)) -v k="$dropped" \
        'BEGIN { printf "%-9s %-5s %-7s %10d %8.3f %11.0f %11.0f %9d\n", d, t, n, r, s, r / s, (r > 0 ? c / r : 0), k }'
    done
  done
done
