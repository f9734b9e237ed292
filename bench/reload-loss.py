#!/usr/bin/env python3
"""Zero loss across reloads, the long version (issue 13 section 2).

    cd bench && ./reload-loss.py [--io-backend uring|portable] [--seconds 60] [--rate 80000] [--reloads 24]

Runs the release relay (../.build/release/statsrelay) with --config on 127.0.0.1:18135, one
worker, admin on 127.0.0.1:18137, and four sink sockets on 127.0.0.1. A sender process offers
--rate lines/s for --seconds, in datagrams of 16 sequence-numbered lines (reload.<n>:1|c) from
one socket; meanwhile the file is rewritten and the relay sent SIGHUP --reloads times,
alternating backends [A,B,C] / [C,D] and packet-len 1400 / 512, each reload awaited in the log
("configuration reloaded"). Then 200 more datagrams go out under the last configuration.

Each line's allowed configurations are bracketed from outside, as in the loopback test
(Tests/UringRelayKernelTests/ReloadLossTests.swift): a reload whose log line was seen before
the line's datagram was sent is in force for it; a reload signalled after /metrics counted the
datagram received (one worker reads one socket in order, so the count is a prefix) is not.
Prints lines sent, received, lost, duplicated, misrouted (with the reload step), split or
foreign, and packets over the length in force. Exits 1 if any is non-zero. Loopback only;
every wait is bounded.
"""
import argparse
import multiprocessing as mp
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "Vectors"))
import benchlib  # noqa: E402
import contextlib  # noqa: E402
import io  # noqa: E402

with contextlib.redirect_stdout(io.StringIO()):  # the module prints its vectors when loaded
    from rehash_vectors import fnv1a64, jump  # noqa: E402  the reference routing, not the relay's

LINES_PER_DATAGRAM = 16
PORT, ADMIN = 18135, 18137
LENGTHS = [1400, 512]


def lines_of(datagram):
    return benchlib.numbered_lines("reload", datagram, LINES_PER_DATAGRAM)


def sender(count, rate, sent):
    benchlib.paced_sender(PORT, "reload", LINES_PER_DATAGRAM, count, rate, sent)


def yaml(pool, length, driver):
    backends = "\n".join(f"  - {b}" for b in pool)
    return (f'listeners: ["127.0.0.1:{PORT}"]\nthreads: 1\nio-backend: {driver}\nrcvbuf: 64M\n'
            f"admin: 127.0.0.1:{ADMIN}\npacket-len: {length}\nbackends:\n{backends}\n")


def received_datagrams():
    """The relay's datagrams_received counter from /metrics (at most 250 ms old)."""
    return benchlib.metric(benchlib.scrape(ADMIN), "statsrelay_datagrams_received_total")


metric = benchlib.metric


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--io-backend", default="uring", choices=["uring", "portable"])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--rate", type=int, default=80_000)
    ap.add_argument("--reloads", type=int, default=24)
    ap.add_argument("--relay", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".build", "release", "statsrelay"))
    args = ap.parse_args()
    ctx = mp.get_context("fork")

    socks = benchlib.sink_sockets(4)
    specs = [benchlib.address_of(s) for s in socks]
    pools = [[specs[0], specs[1], specs[2]], [specs[2], specs[3]]]
    work = tempfile.mkdtemp(prefix="reload-loss.")
    config = os.path.join(work, "statsrelay.yaml")
    with open(config, "w") as f:
        f.write(yaml(pools[0], LENGTHS[0], args.io_backend))
    log = open(os.path.join(work, "relay.log"), "w+")
    relay = subprocess.Popen([args.relay, "--config", config], stderr=log, stdout=log)

    def log_text():
        with open(log.name) as f:
            return f.read()

    def wait_log(pattern, count, seconds=20):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if log_text().count(pattern) >= count:
                return True
            time.sleep(0.002)
        return False

    if not wait_log("listening on", 1):
        sys.exit(f"the relay did not start:\n{log_text()}")

    stop = ctx.Event()
    packets = os.path.join(work, "packets")
    rx = ctx.Process(target=benchlib.record_packets, args=(socks, packets, stop))
    rx.start()
    datagrams = int(args.seconds * args.rate / LINES_PER_DATAGRAM)
    sent = ctx.Value("q", 0, lock=False)
    tx = ctx.Process(target=sender, args=(datagrams, args.rate, sent))
    began = time.monotonic()
    tx.start()
    read_before, sent_after, durations, failed = [], [], [], []
    for step in range(1, args.reloads + 1):
        # Reloads spread over the first 95 % of the traffic.
        target = datagrams * step * 95 // (100 * args.reloads)
        while sent.value < target and tx.is_alive():
            time.sleep(0.001)
        with open(config + ".new", "w") as f:
            f.write(yaml(pools[step % 2], LENGTHS[step % 2], args.io_backend))
        os.replace(config + ".new", config)
        read_before.append(received_datagrams())
        t0 = time.monotonic()
        relay.send_signal(signal.SIGHUP)
        if not wait_log("configuration reloaded", step):
            failed.append(step)
        sent_after.append(sent.value)
        durations.append((time.monotonic() - t0) * 1000)
    tx.join()
    seconds = time.monotonic() - began
    tail = datagrams
    tail_count = 200
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for datagram in range(tail, tail + tail_count):
        sock.sendto(lines_of(datagram), ("127.0.0.1", PORT))
    # The relay may lag behind the sender: wait (bounded) until it has read every datagram, so
    # that the stop's drain budget plays no part, then longer than the flush interval.
    deadline = time.monotonic() + 120
    caught_up = False
    while time.monotonic() < deadline:
        if received_datagrams() >= tail + tail_count:
            caught_up = True
            break
        time.sleep(0.1)
    lag = time.monotonic() - (deadline - 120)
    time.sleep(0.5)
    metrics = benchlib.scrape(ADMIN)
    relay.send_signal(signal.SIGTERM)
    status = relay.wait(timeout=30)
    stop.set()
    rx.join(timeout=60)

    total_datagrams = tail + tail_count
    total = total_datagrams * LINES_PER_DATAGRAM
    backend_of = bytearray(b"\xff") * total
    copies = bytearray(total)
    foreign = 0
    windows_lo = [0] * total_datagrams
    windows_hi = [0] * total_datagrams
    # Window per datagram: earliest = reloads seen done before it was sent; latest = reloads
    # signalled before the relay counted it received.
    import bisect
    for d in range(total_datagrams):
        windows_lo[d] = len(sent_after) if d >= tail else bisect.bisect_left(sent_after, d)
        windows_hi[d] = bisect.bisect_right(read_before, d)
    too_long = []
    packet_count = 0
    line_re = re.compile(rb"^reload\.(\d+):1\|c$")
    for backend, packet in benchlib.recorded_packets(packets):
        length = len(packet)
        packet_count += 1
        allowed = 0
        for line in packet.split(b"\n"):
            if not line:
                continue
            m = line_re.match(line)
            n = int(m.group(1)) if m else -1
            if not (0 <= n < total):
                foreign += 1
                continue
            copies[n] = min(copies[n] + 1, 255)
            backend_of[n] = backend
            d = n // LINES_PER_DATAGRAM
            lo, hi = windows_lo[d], windows_hi[d]
            allowed = max(allowed, max(LENGTHS[c % 2] for c in range(lo, hi + 1)) if lo <= hi else 0)
        if length > allowed:
            too_long.append((specs[backend], length, allowed))

    lost = [n for n in range(total) if copies[n] == 0]
    duplicated = [n for n in range(total) if copies[n] > 1]
    misrouted = []
    current = 0
    for n in range(total):
        if copies[n] == 0:
            continue
        d = n // LINES_PER_DATAGRAM
        lo, hi = max(current, windows_lo[d]), windows_hi[d]
        h = fnv1a64(f"reload.{n}".encode())
        found = None
        for c in range(lo, hi + 1):
            pool = pools[c % 2]
            if pool[jump(h, len(pool))] == specs[backend_of[n]]:
                found = c
                break
        if found is None:
            misrouted.append((n, specs[backend_of[n]], windows_lo[d], windows_hi[d], current))
        else:
            current = found

    if not caught_up:
        print("  the relay had not read every datagram 120 s after the traffic ended")
    uname = os.uname()
    print(f"kernel {uname.release}, {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}, io-backend {args.io_backend}, "
          f"{args.relay} --config (threads 1, packet-len 1400/512, backends [A,B,C]/[C,D])")
    print(f"offered {datagrams * LINES_PER_DATAGRAM} lines in {seconds:.1f} s = {datagrams * LINES_PER_DATAGRAM / seconds:,.0f} lines/s "
          f"(+{tail_count * LINES_PER_DATAGRAM} after the last reload); {args.reloads} SIGHUP reloads, "
          f"{args.reloads - len(failed)} logged as reloaded; reload to log line ms: "
          f"min {min(durations):.0f} median {sorted(durations)[len(durations) // 2]:.0f} max {max(durations):.0f}; "
          f"the relay read the last datagram {lag:.1f} s after the traffic ended")
    print(f"lines sent {total}, received {total - len(lost) + sum(max(c - 1, 0) for c in copies)}, lost {len(lost)}, "
          f"duplicated {len(duplicated)}, misrouted {len(misrouted)}, split or foreign {foreign}; "
          f"packets {packet_count}, over the length in force {len(too_long)}; last configuration in force at the end: {current == args.reloads}")
    reloads_ok = sum(int(float(v)) for v in re.findall(r'^statsrelay_config_reloads_total\{result="success"\} (\S+)$', metrics, re.M))
    print(f"relay: exit {status}, config_reloads success {reloads_ok}, "
          f"pool_changes {metric(metrics, 'statsrelay_pool_changes_total')}, "
          f"datagrams dropped {metric(metrics, 'statsrelay_datagrams_dropped_total')} (all reasons, kernel included), "
          f"lines_forwarded {metric(metrics, 'statsrelay_lines_forwarded_total')}")
    for n in lost[:10]:
        d = n // LINES_PER_DATAGRAM
        print(f"  lost line {n}: datagram {d}, between reloads {windows_lo[d]} and {windows_hi[d]}")
    for n, backend, lo, hi, cur in misrouted[:10]:
        print(f"  misrouted line {n} at {backend}: allowed configurations {lo}..{hi}, previous line's {cur}")
    for n in duplicated[:10]:
        print(f"  duplicated line {n}")
    for backend, length, allowed in too_long[:10]:
        print(f"  packet of {length} bytes at {backend}, length in force at most {allowed}")
    if failed:
        print(f"  reloads not logged within 20 s: {failed}")
    bad = not caught_up or lost or duplicated or misrouted or foreign or too_long or failed or current != args.reloads or status != 0
    if bad:
        print(f"  relay log kept in {log.name}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
