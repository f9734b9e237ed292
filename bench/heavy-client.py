#!/usr/bin/env python3
"""One heavy client beside steady ones: what each steady client loses, with the kernel's
SO_REUSEPORT hash and with --reuseport-steering random (issue 15, "One heavy client must not
starve the others"; issue 16, steering).

    cd bench && sudo ./heavy-client.py [--relay ../.build/release/statsrelay] [--seconds 10]
                                       [--io-backend uring|portable] [--threads 2] [--rounds 3]

For each round and each steering (hash, random; interleaved), the relay runs on 127.0.0.1:18155
with --threads, two backends (sinks on 127.0.0.1 with 64 MiB buffers) and its default --rcvbuf.
One heavy client sends 8 KiB datagrams of packed lines flat out from one socket; eight steady
clients, each its own socket, send one-line datagrams at --steady-rate each, sequence-numbered.
After --seconds the clients stop, the relay settles and stops, and the sinks report which steady
lines arrived. Printed per steering: each steady client's loss (%), the heavy client's lines
delivered, the relay's kernel drops per worker socket (from /proc/net/udp before the stop), and
any drop at the sinks. The steady lines are named so the relay's jump hash sends them all to
backend 0 and the heavy lines to backend 1: a drop at the heavy sink (a Python reader behind a
relay forwarding millions of lines a second) understates only the heavy figure; a drop at the
steady sink would make the loss figures wrong. Medians over the rounds at the end.
Loopback only; every loop is bounded in count and time.
"""
import argparse
import multiprocessing as mp
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "Vectors"))
import contextlib  # noqa: E402
import io  # noqa: E402

import benchlib  # noqa: E402

with contextlib.redirect_stdout(io.StringIO()):  # the module prints its vectors when loaded
    from rehash_vectors import fnv1a64, jump  # noqa: E402  the reference routing, not the relay's

PORT = 18155
STEADY = 8


def names_to(backend, prefix, count):
    """`count` metric names `prefix<n>` that the relay's jump hash sends to `backend` of two, so
    the steady lines reach a sink of their own, which the heavy lines never crowd."""
    names, n = [], 0
    while len(names) < count:
        name = f"{prefix}{n}"
        if jump(fnv1a64(name.encode()), 2) == backend:
            names.append(name)
        n += 1
    return names


STEADY_NAMES = names_to(0, "steady.c", STEADY)
HEAVY_NAMES = names_to(1, "heavy.m", 500)


def heavy(seconds, stop, sent):
    """8 KiB datagrams of packed counter lines, flat out, from one socket."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    lines, size, index = [], 0, 0
    while size < 8_000:
        line = f"{HEAVY_NAMES[index % len(HEAVY_NAMES)]}:1|c"
        lines.append(line)
        size += len(line) + 1
        index += 1
    payload = "\n".join(lines).encode()
    count, end = 0, time.monotonic() + seconds
    while not stop.is_set() and (count & 255 or time.monotonic() < end):
        try:
            sock.sendto(payload, ("127.0.0.1", PORT))
            count += 1
        except OSError:
            pass
    sent.value = count * len(lines)


def steady(client, rate, seconds, sent):
    """One-line datagrams STEADY_NAMES[client]:<n>|c (n the sequence number) at `rate`/s from
    one socket."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    start = time.monotonic()
    n = 0
    while n < rate * seconds:
        due = start + n / rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        sock.sendto(f"{STEADY_NAMES[client]}:{n}|c".encode(), ("127.0.0.1", PORT))
        n += 1
    sent[client] = n


def sink(socks, arrived, heavy_lines, stop):
    """Records each steady line's arrival at backend 0 (arrived[client] counts distinct
    sequence numbers) and counts the heavy lines at backend 1, until `stop` and a second of
    silence."""
    import selectors
    sel = selectors.DefaultSelector()
    for sock in socks:
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ)
    seen = [set() for _ in range(STEADY)]
    pattern = re.compile(rb"steady\.c(\d+):(\d+)\|")
    client_of = {int(name[len("steady.c"):]): index for index, name in enumerate(STEADY_NAMES)}
    last = time.monotonic()
    total = 0
    while True:
        for key, _ in sel.select(0.1):
            while True:
                try:
                    data = key.fileobj.recv(65_536)
                except BlockingIOError:
                    break
                if b"steady." in data:
                    for client, n in pattern.findall(data):
                        seen[client_of[int(client)]].add(int(n))
                else:
                    total += data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
                last = time.monotonic()
        if stop.is_set() and time.monotonic() - last > 1.0:
            break
    for client in range(STEADY):
        arrived[client] = len(seen[client])
    heavy_lines.value = total


def udp_drops(port):
    """Per socket bound to `port`: the drops column of /proc/net/udp."""
    with open("/proc/net/udp") as f:
        rows = f.read().splitlines()[1:]
    drops = []
    for row in rows:
        fields = row.split()
        if int(fields[1].split(":")[1], 16) == port:
            drops.append(int(fields[-1]))
    return drops


def one_run(args, steering, ctx):
    socks = benchlib.sink_sockets(2, rcvbuf=64 << 20)
    specs = [benchlib.address_of(s) for s in socks]
    log = tempfile.NamedTemporaryFile("w+", prefix="heavy-client.", delete=False)
    relay = subprocess.Popen(
        [args.relay, "--bind", "127.0.0.1", "--port", str(PORT), "--threads", str(args.threads), "--admin", "none",
         "--io-backend", args.io_backend, "--reuseport-steering", steering] + specs, stderr=log, stdout=log)
    deadline = time.monotonic() + 10
    while "listening on" not in open(log.name).read():
        if time.monotonic() > deadline or relay.poll() is not None:
            sys.exit(f"the relay did not start:\n{open(log.name).read()}")
        time.sleep(0.01)
    stop = ctx.Event()
    arrived = ctx.Array("q", STEADY, lock=False)
    heavy_lines = ctx.Value("q", 0, lock=False)
    rx = ctx.Process(target=sink, args=(socks, arrived, heavy_lines, stop))
    rx.start()
    sent = ctx.Array("q", STEADY, lock=False)
    heavy_sent = ctx.Value("q", 0, lock=False)
    clients = [ctx.Process(target=steady, args=(client, args.steady_rate, args.seconds, sent)) for client in range(STEADY)]
    hv = ctx.Process(target=heavy, args=(args.seconds, ctx.Event(), heavy_sent))
    for process in clients + [hv]:
        process.start()
    for process in clients + [hv]:
        process.join(args.seconds + 30)
    time.sleep(1)  # the relay takes what is queued: the figures, not a synchronisation
    drops = udp_drops(PORT)
    relay.send_signal(signal.SIGTERM)
    relay.wait(timeout=30)
    stop.set()
    rx.join(30)
    sink_drops = [udp_drops(s.getsockname()[1])[0] for s in socks]
    losses = [100.0 * (sent[c] - arrived[c]) / sent[c] if sent[c] else 0.0 for c in range(STEADY)]
    for s in socks:
        s.close()
    os.unlink(log.name)
    return {"losses": losses, "heavy_sent": heavy_sent.value, "heavy_arrived": heavy_lines.value,
            "relay_socket_drops": drops, "sink_drops": sink_drops}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--relay", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".build", "release", "statsrelay"))
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--steady-rate", type=int, default=500, help="datagrams/s per steady client (default 500)")
    ap.add_argument("--io-backend", default="uring", choices=["uring", "portable"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    ctx = mp.get_context("fork")
    print(f"kernel {os.uname().release}, {os.cpu_count()} CPUs, relay {args.relay} --io-backend {args.io_backend} "
          f"--threads {args.threads}; heavy: 8 KiB datagrams flat out, 1 socket; steady: {STEADY} sockets x "
          f"{args.steady_rate} datagrams/s; {args.seconds} s per run", flush=True)
    results = {"hash": [], "random": []}
    for round_ in range(args.rounds):
        for steering in ("hash", "random"):
            run = one_run(args, steering, ctx)
            results[steering].append(run)
            print(f"round {round_ + 1} {steering:6s}: steady loss % " + " ".join(f"{x:5.1f}" for x in run["losses"])
                  + f" | worst {max(run['losses']):5.1f} | heavy lines {run['heavy_arrived']}/{run['heavy_sent']}"
                  + f" | relay socket drops {run['relay_socket_drops']} | sink drops steady/heavy {run['sink_drops']}", flush=True)
    print("\nmedians over rounds:")
    for steering, runs in results.items():
        worst = statistics.median(max(run["losses"]) for run in runs)
        mean = statistics.median(statistics.mean(run["losses"]) for run in runs)
        heavy_share = statistics.median(run["heavy_arrived"] / max(run["heavy_sent"], 1) for run in runs)
        print(f"  {steering:6s}: worst steady client loses {worst:.1f} %, steady clients lose {mean:.1f} % on average, "
              f"heavy client delivered {100 * heavy_share:.1f} %")


if __name__ == "__main__":
    main()
