#!/usr/bin/env python3
"""Soak: N minutes of realistic traffic through the relay, reconciled every minute and exactly at
the end (issue 15, "Soak").

    cd bench && sudo ./soak.py [--minutes 30] [--rate 20000] [--io-backend uring|portable]
                               [--threads 2] [--relay ../.build/release/statsrelay]

The release relay runs with --config on 127.0.0.1:18145 (admin 127.0.0.1:18147), four backends
(sink sockets on 127.0.0.1, each with a TCP listener on the same port number for
`health-check: tcp`), `on-backend-down: hold`. Four sender sockets offer --rate lines/s of a
realistic mix: Zipf-distributed names (10 000 of them, s = 1.1), counters with sample rates,
gauges (absolute and +/- deltas), timers, histograms, sets, distributions, DogStatsD tags, 1 to 30
lines per datagram. Meanwhile backend D flaps (its TCP check port closed for 8 s every 30 s) and
the configuration is reloaded every minute (packet-len 1400/1000, health-rise 2/3 alternating).

Every minute it prints, from /metrics and the sinks: datagrams sent and received, kernel drops,
per backend the lines the relay counts as sent against the lines the sink got (the sink may be
ahead by what the relay has not confirmed yet, never behind), the hold in use, D's state, and the
relay's RSS (VmRSS). At the end the senders stop, the relay is let settle and stopped with SIGTERM,
and its exit report is reconciled exactly:

  datagrams sent  = received + dropped (kernel) + dropped at exit
  lines received  = lines in the datagrams it received (when the kernel dropped none)
  lines received  = forwarded + dropped by reason (missing_colon, empty_name, nul_byte,
                    no_send_buffer, backend_down)
  per backend     : lines_sent = lines the sink received, each line whole and well-formed
  forwarded       = sum over backends of sent + every per-backend loss counter, + held at exit,
                    unsent at exit, in flight at exit, removed

RSS is "flat" when no minute after the second exceeds the second minute's by more than
--rss-slack-mib (default 8), each minute's RSS taken less the hold store's bytes in use (held lines
are memory the relay is asked to use, up to hold-bytes). Exits 1 if any check fails. Loopback only; every loop is bounded.
"""
import argparse
import multiprocessing as mp
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

import benchlib

PORT, ADMIN = 18145, 18147
NAMES = 10_000
LINE = re.compile(rb"^soak\.[a-z]+\.[0-9]+:(?:[+-]?[0-9.]+(?::[0-9.]+)*)\|(?:c|g|ms|h|s|d)(?:\|@0\.[0-9]+)?(?:\|#[a-z0-9:,._-]+)?$")
LOSS_COUNTERS = ["lines_dropped.send_error", "lines_dropped.backend_down", "lines_dropped.hold_overflow",
                 "lines_dropped.refused", "lines_dropped.unreachable", "lines_unconfirmed_at_exit", "lines_doubted"]
GLOBAL_LOSSES = ["statsrelay.lines_dropped.held_at_exit", "statsrelay.lines_dropped.unsent_at_exit",
                 "statsrelay.lines_in_flight_at_exit", "statsrelay.lines_dropped.backend_removed"]


def zipf_names(rng, count, s=1.1):
    """`count` metric names drawn from a Zipf distribution over NAMES ranks."""
    weights = [1 / (rank ** s) for rank in range(1, NAMES + 1)]
    kinds = ["api", "db", "cache", "queue", "web", "auth"]
    ranks = rng.choices(range(NAMES), weights=weights, k=count)
    return [f"soak.{kinds[r % len(kinds)]}.{r}" for r in ranks]


def one_line(rng, name):
    kind = rng.random()
    if kind < 0.35:
        line = f"{name}:{rng.randint(1, 9)}|c" + (f"|@0.{rng.randint(1, 9)}" if rng.random() < 0.3 else "")
    elif kind < 0.5:
        line = f"{name}:{rng.choice(['', '+', '-'])}{rng.randint(0, 500)}|g"
    elif kind < 0.7:
        line = f"{name}:{rng.randint(1, 900)}.{rng.randint(0, 9)}|ms"
    elif kind < 0.78:
        line = f"{name}:{rng.randint(1, 90)}|h"
    elif kind < 0.86:
        line = f"{name}:{rng.randint(1, 5000)}|s"
    else:
        values = ":".join(str(rng.randint(1, 99)) for _ in range(rng.randint(1, 4)))
        line = f"{name}:{values}|d"
    if rng.random() < 0.6:
        line += f"|#env:prod,host:h{rng.randint(1, 40)},az:{rng.choice(['a', 'b', 'c'])}"
    return line


def datagram_pool(seed, count=3_000):
    """Prebuilt datagrams (bytes, line count): 1 to 30 lines each, under 1 400 bytes."""
    rng = random.Random(seed)
    names = zipf_names(rng, count * 30)
    pool, cursor = [], 0
    for _ in range(count):
        lines = []
        for _ in range(rng.randint(1, 30)):
            line = one_line(rng, names[cursor])
            cursor += 1
            if sum(len(x) + 1 for x in lines) + len(line) > 1_400:
                break
            lines.append(line)
        pool.append(("\n".join(lines).encode(), len(lines)))
    return pool


def sender(pool, rate, seconds, sent_datagrams, sent_lines, stop):
    """Sends the pool round-robin from four sockets, paced to `rate` lines/s, until `seconds`
    pass or `stop` is set."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]
    start = time.monotonic()
    lines = 0
    index = 0
    while not stop.is_set():
        now = time.monotonic()
        if now - start >= seconds:
            break
        due = start + lines / rate
        if due - now > 0.0005:
            time.sleep(min(due - now, 0.05))
            continue
        payload, count = pool[index % len(pool)]
        socks[index % 4].sendto(payload, ("127.0.0.1", PORT))
        index += 1
        lines += count
        sent_datagrams.value = index
        sent_lines.value = lines


def sink(socks, counts, malformed, stop):
    """Counts the lines each sink socket receives (counts[i]); a line that is not one whole
    generated line counts in `malformed`. Ends once `stop` is set and 1.5 s pass in silence."""
    import selectors
    sel = selectors.DefaultSelector()
    for index, sock in enumerate(socks):
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ, index)
    last = time.monotonic()
    while True:
        for key, _ in sel.select(0.1):
            while True:
                try:
                    data = key.fileobj.recv(65_536)
                except BlockingIOError:
                    break
                lines = data.split(b"\n")
                if lines and lines[-1] == b"":
                    lines.pop()
                for line in lines:
                    if not LINE.match(line):
                        malformed.value += 1
                counts[key.data] += len(lines)
                last = time.monotonic()
        if stop.is_set() and time.monotonic() - last > 1.5:
            return


class HealthPort:
    """A TCP listener on a backend's port number, for `health-check: tcp`. `close` stops
    listening but keeps the port bound (shutdown(2) of the listening socket), so no other socket
    (a health probe's ephemeral source port) can take it before `open` listens again."""

    def __init__(self, port):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.setblocking(False)
        self.listening = False
        self.open()

    def open(self):
        self.sock.listen(64)
        self.listening = True

    def accept_all(self):
        while self.listening:
            try:
                conn, _ = self.sock.accept()
                conn.close()
            except (BlockingIOError, OSError):
                return

    def close(self):
        self.sock.shutdown(socket.SHUT_RDWR)
        self.listening = False


def yaml(specs, length, rise, driver, threads):
    backends = "\n".join(f"  - {spec}" for spec in specs)
    return (f'listeners: ["127.0.0.1:{PORT}"]\nthreads: {threads}\nio-backend: {driver}\nrcvbuf: 64M\n'
            f"admin: 127.0.0.1:{ADMIN}\npacket-len: {length}\nhealth-check: tcp\nhealth-interval: 1s\n"
            f"health-timeout: 500ms\nhealth-fall: 2\nhealth-rise: {rise}\non-backend-down: hold\nhold-bytes: 64M\n"
            f"flap-hold: 20s\nflap-hold-max: 2m\nbackends:\n{backends}\n")


def scrape():
    return benchlib.scrape(ADMIN)


metric = benchlib.metric


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for row in f:
            if row.startswith("VmRSS:"):
                return int(row.split()[1])
    return 0


def report_values(text):
    """The exit report's `name{labels} value` lines as a dict."""
    values = {}
    for row in text.splitlines():
        match = re.match(r"^(statsrelay\.[a-z_.]+(?:\{[^}]*\})?) (\d+)$", row.strip())
        if match:
            values[match.group(1)] = int(match.group(2))
    return values


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--rate", type=int, default=20_000, help="lines/s offered (default 20000)")
    ap.add_argument("--io-backend", default="uring", choices=["uring", "portable"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rss-slack-mib", type=float, default=8)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--relay", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".build", "release", "statsrelay"))
    args = ap.parse_args()
    ctx = mp.get_context("fork")
    seconds = args.minutes * 60

    socks, health = [], []
    while len(socks) < 4:
        [s] = benchlib.sink_sockets(1)
        try:
            health.append(HealthPort(s.getsockname()[1]))
        except OSError:
            s.close()  # that TCP port is taken: another UDP port
            continue
        socks.append(s)
    specs = [benchlib.address_of(s) for s in socks]
    work = tempfile.mkdtemp(prefix="soak.")
    config = os.path.join(work, "statsrelay.yaml")
    with open(config, "w") as f:
        f.write(yaml(specs, 1400, 2, args.io_backend, args.threads))
    log = open(os.path.join(work, "relay.log"), "w+")
    relay = subprocess.Popen([args.relay, "--config", config], stderr=log, stdout=log)

    def log_text():
        with open(log.name) as f:
            return f.read()

    def wait_log(pattern, count, limit=20):
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            for port in health:
                port.accept_all()
            if log_text().count(pattern) >= count:
                return True
            time.sleep(0.01)
        return False

    if not wait_log("listening on", 1):
        sys.exit(f"the relay did not start:\n{log_text()}")
    print(f"soak: {args.minutes} min at {args.rate} lines/s, {args.io_backend}, {args.threads} workers, "
          f"kernel {os.uname().release}, relay {args.relay}, work {work}", flush=True)

    pool = datagram_pool(args.seed)
    stop = ctx.Event()
    counts = ctx.Array("q", 4, lock=False)
    malformed = ctx.Value("q", 0, lock=False)
    rx = ctx.Process(target=sink, args=(socks, counts, malformed, stop))
    rx.start()
    sent_datagrams, sent_lines = ctx.Value("q", 0, lock=False), ctx.Value("q", 0, lock=False)
    tx_stop = ctx.Event()
    tx = ctx.Process(target=sender, args=(pool, args.rate, seconds, sent_datagrams, sent_lines, tx_stop))
    began = time.monotonic()
    tx.start()

    failures, rss, reloads, flaps = [], [], 0, 0
    next_minute, next_reload, flap_at, d_closed = began + 60, began + 60, began + 30, False
    print("  min   sent_dgrams  recv_dgrams  kernel_drops  sent/sink A          B                    C                    D (up)            hold_MiB  rss-hold_MiB", flush=True)
    while tx.is_alive() or time.monotonic() < began + seconds:
        now = time.monotonic()
        if now > began + seconds + 30:
            break
        for port in health:
            port.accept_all()
        if now >= flap_at:
            if d_closed:
                health[3].open()
                flap_at = now + 22
            else:
                health[3].close()
                flaps += 1
                flap_at = now + 8
            d_closed = not d_closed
        if now >= next_reload:
            reloads += 1
            with open(config + ".new", "w") as f:
                f.write(yaml(specs, [1400, 1000][reloads % 2], [2, 3][reloads % 2], args.io_backend, args.threads))
            os.replace(config + ".new", config)
            relay.send_signal(signal.SIGHUP)
            if not wait_log("configuration reloaded", reloads, limit=10):
                failures.append(f"reload {reloads} was not reported done within 10 s")
            next_reload += 60
        if now >= next_minute:
            text = scrape()
            # The hold store's pages count in RSS while it holds D's lines: compare without them.
            rss.append(rss_kib(relay.pid) - metric(text, "statsrelay_hold_in_use_bytes") // 1024)
            cells = []
            for index, spec in enumerate(specs):
                claimed = metric(text, "statsrelay_backend_lines_sent_total", f'backend="{spec}"')
                got = counts[index]
                cells.append(f"{claimed}/{got}")
                if got < claimed:
                    failures.append(f"minute {len(rss)}: backend {spec} counted {claimed} sent, its sink got {got}")
            up = metric(text, "statsrelay_backend_up", f'backend="{specs[3]}"')
            kernel_drops = metric(text, "statsrelay_datagrams_dropped_total", 'reason="kernel"')
            print(f"  {len(rss):3d}  {sent_datagrams.value:11d}  {metric(text, 'statsrelay_datagrams_received_total'):11d}  "
                  f"{kernel_drops:12d}  "
                  + "  ".join(f"{cell:19s}" for cell in cells[:3]) + f"  {cells[3]:15s}({up})  "
                  f"{metric(text, 'statsrelay_hold_in_use_bytes') / 2**20:8.1f}  {rss[-1] / 1024:7.1f}", flush=True)
            next_minute += 60
        time.sleep(0.05)
    tx_stop.set()
    tx.join()
    # Let the relay take everything queued, replay what it holds (D's check port open), confirm.
    if d_closed:
        health[3].open()
        d_closed = False
    settle = time.monotonic() + 60
    previous = None
    while time.monotonic() < settle:
        for port in health:
            port.accept_all()
        text = scrape()
        state = (metric(text, "statsrelay_datagrams_received_total"), metric(text, "statsrelay_backend_lines_sent_total"),
                 metric(text, "statsrelay_hold_in_use_bytes"))
        if state == previous and state[2] == 0:
            break
        previous = state
        time.sleep(1)
    rss_after_settle = rss_kib(relay.pid)
    relay.send_signal(signal.SIGTERM)
    try:
        status = relay.wait(timeout=30)
    except subprocess.TimeoutExpired:
        relay.kill()
        status = "killed after 30 s"
    stop.set()
    rx.join(timeout=30)
    report = report_values(log_text())
    settled_rss = rss_after_settle
    duration = time.monotonic() - began

    def r(name, backend=None):
        return report.get(f'{name}{{backend="{backend}"}}' if backend else name, 0)

    print(f"\nended after {duration:.0f} s: exit {status}; {reloads} reloads, D flapped {flaps} times, "
          f"{sent_lines.value} lines in {sent_datagrams.value} datagrams sent", flush=True)
    if status != 0:
        failures.append(f"the relay exited {status}")
    received, kernel, at_exit = r("statsrelay.datagrams_received"), r("statsrelay.datagrams_dropped.kernel"), r("statsrelay.datagrams_dropped.at_exit")
    print(f"datagrams: sent {sent_datagrams.value} = received {received} + kernel {kernel} + at exit {at_exit}")
    if sent_datagrams.value != received + kernel + at_exit:
        failures.append("datagrams sent != received + dropped")
    if kernel == 0 and at_exit == 0 and r("statsrelay.lines_received") != sent_lines.value:
        failures.append(f"lines received {r('statsrelay.lines_received')} != lines sent {sent_lines.value}")
    reasons = ["missing_colon", "empty_name", "nul_byte", "no_send_buffer", "backend_down"]
    dropped = sum(r(f"statsrelay.lines_dropped.{reason}") for reason in reasons)
    forwarded = r("statsrelay.lines_forwarded")
    print(f"lines: received {r('statsrelay.lines_received')} = forwarded {forwarded} + dropped by reason {dropped}")
    if r("statsrelay.lines_received") != forwarded + dropped:
        failures.append("lines received != forwarded + dropped by reason")
    accounted = sum(r(name) for name in GLOBAL_LOSSES)
    for index, spec in enumerate(specs):
        sent = r("statsrelay.backend.lines_sent", spec)
        losses = {name: r(f"statsrelay.backend.{name}", spec) for name in LOSS_COUNTERS}
        accounted += sent + sum(losses.values())
        lost = ", ".join(f"{name} {value}" for name, value in losses.items() if value) or "no loss counted"
        print(f"backend {spec}: lines_sent {sent}, sink received {counts[index]}; {lost}; "
              f"held {r('statsrelay.backend.lines_held', spec)}, replayed {r('statsrelay.backend.lines_replayed', spec)}")
        if sent != counts[index]:
            failures.append(f"backend {spec}: lines_sent {sent} != {counts[index]} received")
    print(f"forwarded {forwarded} = sent and lost {accounted} (held at exit, unsent, in flight, removed included)")
    if forwarded != accounted:
        failures.append(f"forwarded {forwarded} != accounted {accounted}")
    if malformed.value:
        failures.append(f"{malformed.value} lines arrived split, merged or altered")
    if len(rss) >= 3:
        growth = (max(rss[2:]) - rss[1]) / 1024
        print(f"RSS less hold: minute 2 {rss[1] / 1024:.1f} MiB, largest after it {max(rss[2:]) / 1024:.1f} MiB (+{growth:.1f}), "
              f"last {rss[-1] / 1024:.1f} MiB; RSS after the settle (hold empty) {settled_rss / 1024:.1f} MiB")
        if growth > args.rss_slack_mib:
            failures.append(f"RSS grew {growth:.1f} MiB after minute 2")
    for failure in failures:
        print(f"FAIL: {failure}")
    print("soak: " + ("PASS" if not failures else "FAIL"))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
