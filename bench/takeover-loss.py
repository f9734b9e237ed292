#!/usr/bin/env python3
"""Zero loss through successive takeovers, the long version (issue 15, "Upgrade and restart
without losing a datagram").

    cd bench && ./takeover-loss.py [--io-backend uring|portable] [--seconds 30] [--rate 100000] \
        [--takeovers 5] [--threads 2] [--port 18175] [--relay ../.build/release/statsrelay]

Starts the release relay (--admin none, 127.0.0.1:18175 or --port, --threads, --control-socket in a
temporary directory) relaying to one sink socket on 127.0.0.1. A sender process offers --rate
lines/s for --seconds, in datagrams of 16 sequence-numbered lines (take.<n>:1|c) from one
socket. Meanwhile, --takeovers times, spread over the traffic, a new relay is started with
--takeover on the control socket; each is awaited ("takeover complete" and its own control
socket in its log) and the old relay must exit 0. After the traffic the last relay gets SIGTERM.

Prints lines sent, received, lost, duplicated, each relay's lines_received / lines_forwarded /
datagrams_dropped.kernel from its exit report, and how long each takeover took (from the new
relay's start to "takeover complete"). Exits 1 if any line is lost or duplicated, a relay's
counters do not reconcile, or a relay does not exit 0. Loopback only; every wait is bounded.
"""
import argparse
import multiprocessing as mp
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time

import benchlib

LINES_PER_DATAGRAM = 16
PORT = 18175


def sender(count, rate, sent):
    benchlib.paced_sender(PORT, "take", LINES_PER_DATAGRAM, count, rate, sent)


class Relay:
    def __init__(self, args, work, index, control, sink, takeover):
        self.log_path = os.path.join(work, f"relay{index}.log")
        self.log = open(self.log_path, "w")
        command = [args.relay, "--admin", "none", "--io-backend", args.io_backend, "--bind", "127.0.0.1", "--port", str(PORT),
                   "--threads", str(args.threads), "--rcvbuf", "32M", "--control-socket", control]
        if takeover:
            command += ["--takeover", control]
        self.started = time.monotonic()
        self.process = subprocess.Popen(command + [sink], stderr=self.log, stdout=self.log)

    def text(self):
        with open(self.log_path) as f:
            return f.read()

    def wait_log(self, pattern, seconds=30):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if pattern in self.text():
                return True
            if self.process.poll() is not None:
                return pattern in self.text()
            time.sleep(0.002)
        return False

    def counter(self, name):
        values = re.findall(rf"^{re.escape(name)} (\d+)$", self.text(), re.M)
        return int(values[-1]) if values else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--io-backend", default="uring", choices=["uring", "portable"])
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--rate", type=int, default=100_000)
    ap.add_argument("--takeovers", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--port", type=int, default=PORT)
    ap.add_argument("--relay", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".build", "release", "statsrelay"))
    args = ap.parse_args()
    globals()["PORT"] = args.port
    ctx = mp.get_context("fork")

    [sink] = benchlib.sink_sockets(1, rcvbuf=64 << 20)
    spec = benchlib.address_of(sink)
    work = tempfile.mkdtemp(prefix="takeover-loss.")
    control = os.path.join(work, "control.sock")

    relays = [Relay(args, work, 0, control, spec, takeover=False)]
    if not relays[0].wait_log(f"control socket on {control}"):
        sys.exit(f"the relay did not start:\n{relays[0].text()}")

    stop = ctx.Event()
    packets = os.path.join(work, "packets")
    rx = ctx.Process(target=benchlib.record_packets, args=([sink], packets, stop))
    rx.start()
    datagrams = int(args.seconds * args.rate / LINES_PER_DATAGRAM)
    sent = ctx.Value("q", 0, lock=False)
    tx = ctx.Process(target=sender, args=(datagrams, args.rate, sent))
    began = time.monotonic()
    tx.start()
    failures, durations = [], []
    for step in range(1, args.takeovers + 1):
        # Takeovers spread over the traffic, the last well before it ends.
        due = began + args.seconds * step / (args.takeovers + 1)
        time.sleep(max(0.0, due - time.monotonic()))
        old = relays[-1]
        new = Relay(args, work, step, control, spec, takeover=True)
        relays.append(new)
        if not new.wait_log("takeover complete") or not new.wait_log(f"control socket on {control}"):
            failures.append(f"takeover {step}: the new relay did not complete it:\n{new.text()}")
            break
        durations.append(time.monotonic() - new.started)
        try:
            status = old.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            old.process.kill()
            status = None
        if status != 0:
            failures.append(f"takeover {step}: the old relay exited {status}:\n{old.text()[-2000:]}")
        print(f"takeover {step}: {durations[-1] * 1000:.0f} ms at {sent.value * LINES_PER_DATAGRAM} lines sent", flush=True)
    tx.join(args.seconds + 60)
    relays[-1].process.send_signal(signal.SIGTERM)
    try:
        status = relays[-1].process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        relays[-1].process.kill()
        status = None
    if status != 0:
        failures.append(f"the last relay exited {status}")
    stop.set()
    rx.join(60)
    elapsed = time.monotonic() - began

    lines_sent = sent.value * LINES_PER_DATAGRAM
    seen = bytearray(lines_sent)
    received = duplicated = foreign = 0
    for _, payload in benchlib.recorded_packets(packets):
        for line in payload.split(b"\n"):
            if not line:
                continue
            match = re.fullmatch(rb"take\.(\d+):1\|c", line)
            if not match or int(match.group(1)) >= lines_sent:
                foreign += 1
                continue
            n = int(match.group(1))
            received += 1
            if seen[n]:
                duplicated += 1
            seen[n] = 1
    lost = lines_sent - sum(seen)
    print(f"kernel {platform.release()}, io backend {args.io_backend}, threads {args.threads}, "
          f"{args.takeovers} takeovers, {args.rate} lines/s offered for {args.seconds:.0f} s "
          f"({LINES_PER_DATAGRAM} lines per datagram)")
    print(f"lines sent {lines_sent}, received {received}, lost {lost}, duplicated {duplicated}, foreign {foreign}; "
          f"offered {lines_sent / elapsed:.0f} lines/s over {elapsed:.1f} s")
    total = 0
    for index, relay in enumerate(relays):
        got, forwarded, kernel = (relay.counter(f"statsrelay.{name}") for name in ("lines_received", "lines_forwarded", "datagrams_dropped.kernel"))
        print(f"relay {index}: lines_received {got}, lines_forwarded {forwarded}, datagrams_dropped.kernel {kernel}")
        if got is None or got != forwarded:
            failures.append(f"relay {index}: lines_received {got} != lines_forwarded {forwarded}")
        total += got or 0
    print(f"relays' lines_received summed {total}; takeover durations ms: {', '.join(f'{d * 1000:.0f}' for d in durations)}")
    if total != lines_sent:
        failures.append(f"the relays received {total} lines, {lines_sent} were sent")
    if lost or duplicated or foreign:
        failures.append("lines lost, duplicated or foreign")
    for failure in failures:
        print("FAIL:", failure)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
