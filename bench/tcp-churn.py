#!/usr/bin/env python3
"""TCP connection churn against --tcp-max-connections beside a steady TCP client (issue 14,
"TCP ingest"; issue 15, "fault injection"): what the churn costs the relay and the steady client.

    sudo bench/tcp-churn.py [--relay .build/release/statsrelay] [--io-backend uring|portable]
                            [--seconds 60] [--max-connections 64] [--hold 128] [--churners 1]
                            [--steady-rate 20000] [--threads 1]

Runs in a network namespace of its own (re-executes itself under `unshare -n` as root; loopback
only, nothing outside it touched; without root, on the host's loopback). The relay listens on
127.0.0.1 with --tcp-port, --tcp-max-connections MAX and one UDP backend (a sink socket recorded
by a child process). Then, for --seconds:
- the steady client, connected first (so it always holds a place), writes sequence-numbered
  lines `steady.N:1|c` at --steady-rate lines/s in writes every 10 ms, then closes its side;
- each churner opens connections as fast as it can, keeps at most --hold open (twice MAX by
  default, so the relay must refuse some), closing the oldest with a reset (SO_LINGER 0, so no
  TIME_WAIT exhausts the client's ports), and sends nothing.
Printed: connections opened per second by the churners (and connect failures by errno), the
relay's accepted/refused/closed counters (scraped from its admin endpoint), the steady client's
lines sent, arrived, missing and duplicated, and the relay's CPU seconds, RSS and open
descriptors (/proc/PID/fd) before the churn, their peak during it and after every connection has
closed: a descriptor leak shows as "after every close" above "with no client". Every loop is
bounded in time.
"""
import argparse
import multiprocessing as mp
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def proc_figures(pid):
    """(CPU seconds, RSS KiB, open descriptors) of process `pid`."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return cpu, rss, len(os.listdir(f"/proc/{pid}/fd"))


def steady(port, rate, seconds, sent, start_event):
    """One connection writing `steady.N:1|c` lines at `rate` lines/s for `seconds`."""
    sock = socket.create_connection(("127.0.0.1", port))
    start_event.set()
    per_write = max(1, rate // 100)
    begin = time.monotonic()
    n = 0
    while time.monotonic() - begin < seconds:
        due = begin + (n // per_write) * 0.01
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        sock.sendall("".join(f"steady.{i}:1|c\n" for i in range(n, n + per_write)).encode())
        n += per_write
        sent.value = n
    sock.shutdown(socket.SHUT_WR)
    # Wait (bounded) for the relay to read the end and close its side.
    sock.settimeout(10)
    try:
        while sock.recv(4096):
            pass
    except OSError:
        pass
    sock.close()


def churn(port, hold, seconds, opened, failures):
    """Opens connections as fast as it can for `seconds`, keeping at most `hold` open."""
    linger = struct.pack("ii", 1, 0)
    held = []
    end = time.monotonic() + seconds
    count = 0
    errors = {}
    while time.monotonic() < end:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        sock.settimeout(2)
        try:
            sock.connect(("127.0.0.1", port))
        except OSError as error:
            errors[error.errno] = errors.get(error.errno, 0) + 1
            sock.close()
            continue
        count += 1
        held.append(sock)
        if len(held) > hold:
            held.pop(0).close()
        if count % 256 == 0:
            opened.value = count
    for sock in held:
        sock.close()
    opened.value = count
    failures.put(errors)


def counters(admin):
    text = benchlib.scrape(admin)
    return {
        "accepted": benchlib.metric(text, "statsrelay_tcp_connections_accepted_total"),
        "refused": benchlib.metric(text, "statsrelay_tcp_connections_refused_total"),
        "open": benchlib.metric(text, "statsrelay_tcp_connections_open"),
        "closed_peer": benchlib.metric(text, "statsrelay_tcp_connections_closed_total", 'reason="peer"'),
        "closed_error": benchlib.metric(text, "statsrelay_tcp_connections_closed_total", 'reason="error"'),
        "accept_errors": benchlib.metric(text, "statsrelay_tcp_accept_errors_total"),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--relay", default=os.path.join(HERE, "..", ".build", "release", "statsrelay"))
    parser.add_argument("--io-backend", default="uring")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--max-connections", type=int, default=64)
    parser.add_argument("--hold", type=int, default=0, help="connections each churner keeps open (default: twice MAX)")
    parser.add_argument("--churners", type=int, default=1)
    parser.add_argument("--steady-rate", type=int, default=20000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    hold = args.hold or 2 * args.max_connections

    if os.geteuid() == 0 and os.environ.get("TCP_CHURN_NETNS") != "1":
        os.environ["TCP_CHURN_NETNS"] = "1"
        os.execvp("unshare", ["unshare", "-n", sys.executable, os.path.abspath(__file__)] + sys.argv[1:])
    if os.environ.get("TCP_CHURN_NETNS") == "1":
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)

    port, admin = 18177, 18178
    sink = benchlib.sink_sockets(1, rcvbuf=64 << 20)
    log = tempfile.NamedTemporaryFile("w+", prefix="tcp-churn.", delete=False)
    command = [args.relay, "--bind", "127.0.0.1", "--port", str(port), "--tcp-port", str(port),
               "--tcp-max-connections", str(args.max_connections), "--threads", str(args.threads),
               "--admin", f"127.0.0.1:{admin}", "--io-backend", args.io_backend, benchlib.address_of(sink[0])]
    relay = subprocess.Popen(command, stderr=log, stdout=log)
    deadline = time.monotonic() + 10
    while "listening on" not in open(log.name).read():
        if time.monotonic() > deadline or relay.poll() is not None:
            sys.exit(f"the relay did not start:\n{open(log.name).read()}")
        time.sleep(0.01)

    _, _, fds_idle = proc_figures(relay.pid)
    ctx = mp.get_context("fork")
    recording = os.path.join(tempfile.mkdtemp(prefix="tcp-churn."), "packets")
    stop = ctx.Event()
    recorder = ctx.Process(target=benchlib.record_packets, args=(sink, recording, stop))
    recorder.start()
    sent = ctx.Value("q", 0, lock=False)
    connected = ctx.Event()
    steady_client = ctx.Process(target=steady, args=(port, args.steady_rate, args.seconds, sent, connected))
    steady_client.start()
    connected.wait(10)
    time.sleep(0.2)  # the steady connection is accepted before the churn starts (a figure, not a synchronisation)
    cpu0, rss0, fds0 = proc_figures(relay.pid)
    opened = [ctx.Value("q", 0, lock=False) for _ in range(args.churners)]
    failures = ctx.Queue()
    churners = [ctx.Process(target=churn, args=(port, hold, args.seconds, opened[i], failures)) for i in range(args.churners)]
    begin = time.monotonic()
    for process in churners:
        process.start()
    peak_fds, peak_rss, peak_open = fds0, rss0, 0
    while any(p.is_alive() for p in churners) and time.monotonic() - begin < args.seconds + 30:
        _, rss, fds = proc_figures(relay.pid)
        peak_fds, peak_rss = max(peak_fds, fds), max(peak_rss, rss)
        peak_open = max(peak_open, counters(admin)["open"])
        time.sleep(0.5)
    elapsed = time.monotonic() - begin
    errors = {}
    for process in churners:
        process.join(30)
    for _ in churners:
        for errno, count in failures.get(timeout=10).items():
            errors[errno] = errors.get(errno, 0) + count
    steady_client.join(args.seconds + 30)
    # Every connection closed: the relay's open count falls to 0 (bounded wait).
    settle = time.monotonic() + 10
    while counters(admin)["open"] != 0 and time.monotonic() < settle:
        time.sleep(0.1)
    time.sleep(0.5)
    cpu1, rss1, fds1 = proc_figures(relay.pid)
    final = counters(admin)
    relay.send_signal(signal.SIGTERM)
    relay.wait(timeout=30)
    stop.set()
    recorder.join(30)

    seen = {}
    for _, packet in benchlib.recorded_packets(recording):
        for line in packet.split(b"\n"):
            if line.startswith(b"steady."):
                n = int(line[7:].split(b":")[0])
                seen[n] = seen.get(n, 0) + 1
    total = sent.value
    missing = sum(1 for n in range(total) if n not in seen)
    duplicated = sum(c - 1 for c in seen.values() if c > 1)
    connects = sum(v.value for v in opened)
    uname = os.uname()
    print(f"kernel {uname.release}, {os.cpu_count()} CPUs, load {open('/proc/loadavg').read().split()[0]}, "
          f"netns {os.environ.get('TCP_CHURN_NETNS') == '1'}")
    print("relay: " + " ".join(command[1:]))
    print(f"churn: {args.churners} churner(s), hold {hold}, {connects} connections in {elapsed:.1f} s = "
          f"{connects / elapsed:.0f}/s; connect failures {errors or 'none'}")
    print(f"relay counters: accepted {final['accepted']} refused {final['refused']} closed.peer {final['closed_peer']} "
          f"closed.error {final['closed_error']} accept_errors {final['accept_errors']} open at the end {final['open']} "
          f"(peak open {peak_open})")
    print(f"steady: sent {total} arrived {len(seen)} missing {missing} duplicated {duplicated} "
          f"({100.0 * missing / max(total, 1):.3f} % lost)")
    print(f"relay CPU {cpu1 - cpu0:.2f} s over the churn ({(cpu1 - cpu0) / elapsed * 100:.1f} % of a CPU); "
          f"RSS KiB before {rss0} peak {peak_rss} after {rss1}; descriptors with no client {fds_idle}, "
          f"with the steady one {fds0}, peak {peak_fds}, after every close {fds1}"
          f"{' (flat)' if fds1 == fds_idle else '  <-- not flat'}")
    print(f"accounting: accepted + refused = {final['accepted'] + final['refused']}, "
          f"connections made = {connects + 1} (the churn's and the steady one)")
    os.unlink(log.name)


if __name__ == "__main__":
    main()
