#!/usr/bin/env python3
"""User-space instructions per line of the release relay under callgrind (issue 16's CI gate).

Run it through bench/callgrind.sh, which puts it in a network namespace of its own (so the
ports are free and /proc/net/snmp's RcvbufErrors counts only this run). See bench/README.md,
section "Instructions per line (callgrind)".

For each io driver and workload: the relay runs under `valgrind --tool=callgrind` with one
worker, `--admin none` and three live sinks (a thread of this script reading and counting
lines). After a warm-up of WARMUP datagrams, the counters are zeroed (`callgrind_control -z`),
the relay is SIGSTOPped (and every thread seen stopped), N datagrams are queued into its socket
(RcvbufErrors must not move),
it is SIGCONTed, and once its socket is empty and the sinks have every line, the counters are
dumped (`callgrind_control -d`). An idle interval measured the same way with N = 0 in the same
process is subtracted, scaled to the drain's length (it is 0 when the relay does not wake while
idle). Instructions per line = that difference / lines queued.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

MASK = (1 << 64) - 1
RELAY_PORT = 18125
SINK_PORTS = (9001, 9002, 9003)
WORKLOADS = {"w1": "line", "w2": "packed"}
DEFAULT_N = {"w1": 200_000, "w2": 20_000}
WARMUP = {"w1": 2_000, "w2": 200}


# ---------------------------------------------------------------- the generator (BenchKit's, ported)

class SplitMix64:
    """bench/Sources/BenchKit/StatsDMix.swift's SplitMix64, bit for bit."""

    def __init__(self, seed: int) -> None:
        self.state = seed & MASK

    def next(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    def below(self, bound: int) -> int:
        return self.next() % bound

    def chance(self, percent: int) -> bool:
        return self.below(100) < percent


def catalog(count: int, seed: int) -> list[tuple[bytes, str, bytes]]:
    """MetricCatalog(count:seed:compact: false): (name, kind, tags) per metric."""
    r = SplitMix64(seed)
    codes = ["200", "201", "304", "404", "500"]
    tables = ["users", "orders", "items", "sessions", "events", "carts", "payments", "audit"]
    envs, svcs = ["prod", "staging"], ["web", "api", "worker", "billing"]
    regions = ["eu-west-1", "us-east-1", "ap-south-1"]
    out = []
    for i in range(count):
        p = r.below(100)
        kind = ("counter" if p < 40 else "timer" if p < 65 else "gauge" if p < 80
                else "set" if p < 90 else "tcounter" if p < 95 else "ttimer")
        tag = ""
        if kind == "counter":
            name = f"api.requests.host-{i // 5}.status_{codes[i % 5]}"
        elif kind == "timer":
            name = f"db.query.{tables[i % 8]}.p{i // 8}.latency"
        elif kind == "gauge":
            name = f"queue.depth.q{i}"
        elif kind == "set":
            name = f"users.unique.page-{i}"
        else:
            name = f"http.req.route-{i}" if kind == "tcounter" else f"http.latency.route-{i}"
            tag = f"|#env:{envs[r.below(2)]},svc:{svcs[r.below(4)]}"
            if r.chance(50):
                tag += f",region:{regions[r.below(3)]}"
        out.append((name.encode(), kind, tag.encode()))
    return out


def line(cat: list[tuple[bytes, str, bytes]], r: SplitMix64) -> bytes:
    """MetricCatalog.appendLine, without the newline."""
    name, kind, tag = cat[r.below(len(cat))]
    parts = [name, b":"]

    def timing() -> None:
        parts.append(f"{r.below(1000)}.{r.below(10)}|ms".encode())

    if kind == "counter":
        parts.append(str(1 if r.chance(80) else 1 + r.below(100)).encode() + b"|c")
        if r.chance(10):
            parts.append(b"|@0.5")
    elif kind == "timer":
        timing()
        if r.chance(70):
            parts.append([b"|@0.1", b"|@0.25", b"|@0.5"][r.below(3)])
    elif kind == "gauge":
        if r.chance(10):
            parts.append((b"+" if r.chance(50) else b"-") + str(r.below(10)).encode())
        else:
            parts.append(str(r.below(10_000)).encode())
        parts.append(b"|g")
    elif kind == "set":
        parts.append(b"u" + str(r.below(100_000)).encode() + b"|s")
    elif kind == "tcounter":
        parts.append(b"1|c")
    else:
        timing()
        parts.append(b"|@0.5")
    parts.append(tag)
    return b"".join(parts)


def pool(mode: str, count: int, seed: int = 1, names: int = 10_000, size: int = 1400) -> list[bytes]:
    """DatagramPool(catalog:mode:count:size:seed:): loadgen's first `count` datagrams."""
    cat = catalog(names, seed)
    r = SplitMix64(seed ^ 0x5EEDDA7A9A3E0001)
    datagrams: list[bytes] = []
    current: list[bytes] = []
    used = 0
    pending = None
    while len(datagrams) < count:
        if pending is not None:
            ln, pending = pending, None
        else:
            ln = line(cat, r) + b"\n"
        if current and (mode == "line" or used + len(ln) > size):
            datagrams.append(b"".join(current))
            current, used, pending = [], 0, ln
            continue
        current.append(ln)
        used += len(ln)
    return datagrams


def datagrams_for(workload: str, n: int) -> list[bytes]:
    """N datagrams cycling over loadgen's pool (65 536 one-line datagrams, or 8 192 packed ones)."""
    mode = WORKLOADS[workload]
    size = min(n, 65_536 if mode == "line" else 8_192)
    p = pool(mode, max(size, 1))
    return [p[i % len(p)] for i in range(n)]


# ---------------------------------------------------------------- sinks and kernel counters

class Sinks:
    """Three live UDP sinks on 127.0.0.1, one thread, counting datagrams and lines."""

    def __init__(self) -> None:
        self.lines = 0
        self.datagrams = 0
        self.socks = []
        for port in SINK_PORTS:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE
            s.bind(("127.0.0.1", port))
            s.setblocking(False)
            self.socks.append(s)
        self.stop = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        import select
        while not self.stop:
            ready, _, _ = select.select(self.socks, [], [], 0.1)
            for s in ready:
                while True:
                    try:
                        data = s.recv(65536)
                    except BlockingIOError:
                        break
                    self.datagrams += 1
                    self.lines += data.count(b"\n")


def udp_snmp() -> dict[str, int]:
    rows = [l.split() for l in Path("/proc/net/snmp").read_text().splitlines() if l.startswith("Udp:")]
    return dict(zip(rows[0][1:], map(int, rows[1][1:])))


def ip_udp_counters() -> dict[str, int]:
    """Every IP and UDP counter of /proc/net/snmp and /proc/net/netstat, as "Table:Name"."""
    out = {}
    for path in ("/proc/net/snmp", "/proc/net/netstat"):
        rows = Path(path).read_text().splitlines()
        for names, values in zip(rows[::2], rows[1::2]):
            for name, value in zip(names.split()[1:], values.split()[1:]):
                if value.lstrip("-").isdigit():
                    out[names.split()[0] + name] = int(value)
    return out


def relay_socket(port: int) -> tuple[int, int] | None:
    """(rx_queue bytes, drops) of the socket bound to 127.0.0.1:port, or None."""
    want = f"0100007F:{port:04X}"
    for l in Path("/proc/net/udp").read_text().splitlines()[1:]:
        f = l.split()
        if f[1] == want:
            return int(f[4].split(":")[1], 16), int(f[-1])
    return None


def stopped(pid: int) -> bool:
    """Whether every thread of pid is stopped (state T or t in /proc/PID/task/TID/stat)."""
    states = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return False  # gone: the wait for the stop then times out, naming it
    for task in tasks:
        try:
            # The state follows the command name, which is in parentheses and may hold spaces.
            states.append((task / "stat").read_text().rsplit(")", 1)[1].split()[0])
        except (OSError, IndexError):
            continue
    return bool(states) and all(state in ("T", "t") for state in states)


def threads(pid: int) -> dict[str, str]:
    """name -> wchan of each thread of pid."""
    out = {}
    for t in Path(f"/proc/{pid}/task").iterdir():
        try:
            out[f"{(t / 'comm').read_text().strip()}/{t.name}"] = (t / "wchan").read_text().strip()
        except OSError:
            pass
    return out


# ---------------------------------------------------------------- callgrind

def control(pid: int, flag: str) -> None:
    if NATIVE:
        return
    subprocess.run(["callgrind_control", flag, str(pid)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   timeout=120)


def dump(pid: int, out_prefix: Path) -> tuple[int, Path]:
    """callgrind_control -d, then the total Ir of the new dump file (0 in `--native` runs)."""
    if NATIVE:
        return 0, out_prefix
    before = set(out_prefix.parent.glob(out_prefix.name + ".*"))
    control(pid, "-d")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        new = set(out_prefix.parent.glob(out_prefix.name + ".*")) - before
        for f in new:
            m = re.search(r"^summary:\s+(\d+)", f.read_text(errors="replace"), re.M)
            if m:
                return int(m.group(1)), f
        time.sleep(0.1)
    raise RuntimeError("callgrind dump did not appear")


def send(dgrams: list[bytes]) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect(("127.0.0.1", RELAY_PORT))
    for d in dgrams:
        while True:
            try:
                s.send(d)
                break
            except (BlockingIOError, InterruptedError):
                time.sleep(0.0001)
    s.close()


def wait_for(cond, seconds: float, what: str, step: float = 0.02) -> None:
    deadline = time.monotonic() + seconds
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {seconds:.0f} s waiting for {what}")
        time.sleep(step)


class Stalled(RuntimeError):
    """The drain made no progress: the run is retried in a fresh process."""


def measure(relay: Path, driver: str, workload: str, n: int, work: Path, sinks: Sinks,
            idle_seconds: float, rnd: int, stall: float | None = None) -> dict:
    stall = STALL_SECONDS if stall is None else stall
    warm = datagrams_for(workload, WARMUP[workload])
    dgrams = datagrams_for(workload, n)
    lines = sum(d.count(b"\n") for d in dgrams)
    warm_lines = sum(d.count(b"\n") for d in warm)
    prefix = work / f"cg.{driver}.{workload}.r{rnd}"
    log = open(work / f"relay.{driver}.{workload}.r{rnd}.log", "w")
    valgrind = [] if NATIVE else ["valgrind", "--tool=callgrind", f"--callgrind-out-file={prefix}"] + (
        ["--dump-instr=yes"] if DUMP_INSTR else [])
    cmd = valgrind + [
           str(relay), "run", "--io-backend", driver, "--admin", "none", "--bind", "127.0.0.1",
           "--port", str(RELAY_PORT), "--threads", "1", "--rcvbuf", "268435456",
           "--packet-len", "1400", "--flush-interval", "10ms"] + RELAY_ARGS + [f"127.0.0.1:{p}" for p in SINK_PORTS]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=log, stderr=log)
    result: dict = {"driver": driver, "workload": workload, "datagrams": n, "lines": lines}
    try:
        # Ready: the socket is bound and the worker exists (under valgrind 3.19 the io_uring
        # relay's main thread may never log "listening": see the README).
        wait_for(lambda: relay_socket(RELAY_PORT) is not None
                 and any(k.startswith("statsrelay-w0") for k in threads(proc.pid)), 300, "the relay's socket")
        base = sinks.lines
        send(warm)
        wait_for(lambda: sinks.lines - base >= warm_lines, 120, "the warm-up lines at the sinks")
        # Let the main thread reach its signal wait if it can (portable: at once).
        try:
            wait_for(lambda: any("sigtimedwait" in v for k, v in threads(proc.pid).items()
                                 if k.split("/")[1] == str(proc.pid)), 5, "main thread", 0.1)
            result["main_thread_in_sigwait"] = True
        except RuntimeError:
            result["main_thread_in_sigwait"] = False
        result["setup_seconds"] = round(time.monotonic() - started, 1)

        # N = 0: what the relay executes while idle, same process.
        control(proc.pid, "-z")
        t0 = time.monotonic()
        time.sleep(idle_seconds)
        idle, _ = dump(proc.pid, prefix)
        idle_span = time.monotonic() - t0

        # N datagrams queued into the stopped relay, then drained.
        control(proc.pid, "-z")
        z0 = time.monotonic()
        os.kill(proc.pid, signal.SIGSTOP)
        # kill() returns before the stop takes effect: a worker descheduled just then (a build on
        # the other core) would otherwise relay the first datagrams queued before `base` below
        # is read, and those lines would never count at the sinks (a drain "stalled" short).
        wait_for(lambda: stopped(proc.pid), 30, "the relay to stop")
        errs0 = udp_snmp()["RcvbufErrors"]
        send(dgrams)
        errs1 = udp_snmp()["RcvbufErrors"]
        counters1, sink_datagrams1 = ip_udp_counters(), sinks.datagrams
        queued, drops = relay_socket(RELAY_PORT)
        result["rcvbuf_errors_while_queueing"] = errs1 - errs0
        result["queued_bytes"] = queued
        base = sinks.lines
        c0 = time.monotonic()
        os.kill(proc.pid, signal.SIGCONT)
        try:
            wait_for(lambda: sinks.lines - base >= lines and relay_socket(RELAY_PORT)[0] == 0, stall,
                     "the drain")
        except RuntimeError:
            at_stall = sinks.lines - base
            still_queued, relay_drops = relay_socket(RELAY_PORT) or (-1, drops)
            stalled_threads = threads(proc.pid)
            counters = ip_udp_counters()
            moved = {k: v - counters1.get(k, 0) for k, v in counters.items() if v != counters1.get(k, 0)}
            sink_queues = [relay_socket(port) for port in SINK_PORTS]
            sink_datagrams = sinks.datagrams - sink_datagrams1
            # Whether the relay still held the missing lines: stopped, it flushes what it holds.
            proc.send_signal(signal.SIGTERM)
            try:
                wait_for(lambda: sinks.lines - base >= lines, 20, "the lines after SIGTERM")
            except RuntimeError:
                pass
            raise Stalled(f"{driver} {workload}: drain stalled: {at_stall} of {lines} lines at the sinks"
                          f" ({sinks.lines - base} once the relay was told to stop), {still_queued} bytes still"
                          f" queued in the relay's socket ({relay_drops - drops} dropped there in the drain),"
                          f" {sink_datagrams} datagrams read by the sinks in the drain, their sockets' (queued, drops)"
                          f" {sink_queues}, the IP and UDP counters that moved in the drain {moved},"
                          f" threads {stalled_threads}")
        result["drain_seconds"] = round(time.monotonic() - c0, 2)
        total, dumpfile = dump(proc.pid, prefix)
        span = time.monotonic() - z0
        result["lines_at_sinks"] = sinks.lines - base
        result["ir_drain"] = total
        result["ir_idle"] = idle
        result["idle_seconds"] = round(idle_span, 2)
        correction = round(idle * span / idle_span)
        result["ir_idle_scaled"] = correction
        net = total - correction
        result["ir_per_line"] = round(net / lines, 1)
        result["ir_per_datagram"] = round(net / n, 1)
        result["dump"] = str(dumpfile)
        result["valid"] = result["rcvbuf_errors_while_queueing"] == 0 and result["lines_at_sinks"] == lines
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
            result["sigterm_exit"] = proc.returncode
        except subprocess.TimeoutExpired:
            result["sigterm_exit"] = None  # did not stop: see the README (valgrind < 3.23 and io_uring_enter)
            result["threads_after_sigterm"] = threads(proc.pid)  # name/tid -> wchan
            proc.kill()
            proc.wait()
        log.close()
    return result


def exit_counters(work: Path, driver: str, workload: str, rnd: int) -> str:
    """The forwarding and loss counters the relay printed at its exit (its log), non-zero ones."""
    wanted = ("datagrams_received", "lines_received", "lines_forwarded", "packets_sent", "lines_dropped",
              "datagrams_dropped", "send_errors", "lines_held", "lines_rehashed", "lines_replayed", "kernel",
              "unconfirmed", "lines_sent", "refused", "unreachable", "doubted")
    found = []
    try:
        for l in (work / f"relay.{driver}.{workload}.r{rnd}.log").read_text(errors="replace").splitlines():
            f = l.split()
            if len(f) == 2 and f[0].startswith("statsrelay.") and any(w in f[0] for w in wanted) and f[1] != "0":
                found.append(f"{f[0][len('statsrelay.'):]}={f[1]}")
    except OSError as e:
        return f"(no log: {e})"
    return " ".join(found) or "(none printed: the relay did not stop)"


def annotate(dumpfile: str, top: int) -> list[str]:
    """The `top` functions by exclusive Ir, names demangled."""
    out = subprocess.run(["callgrind_annotate", "--inclusive=no", "--threshold=100", dumpfile],
                         check=True, capture_output=True, text=True).stdout
    rows = []
    for l in out.splitlines():
        m = re.match(r"^\s*([\d,]+)\s+\(\s*([\d.]+)%\)\s+(.*)$", l)
        # Frames on the worker's stack for the whole interval (thread entry, the closures around
        # the driver's run loop) come out with ~100 % "self" cost in a mid-run dump: left out.
        if m and "PROGRAM TOTALS" not in l and float(m.group(2)) < 90:
            rows.append((m.group(1), m.group(2), m.group(3)))
    rows = rows[:top]
    demangler = shutil.which("swift-demangle")
    names = [r[2] for r in rows]
    if demangler:
        names = subprocess.run([demangler, "--simplified", "--compact"], input="\n".join(names),
                               capture_output=True, text=True).stdout.splitlines()
    return [f"{ir:>14} {pct:>5}%  {name}" for (ir, pct, _), name in zip(rows, names)]


# ---------------------------------------------------------------- main

DUMP_INSTR = False
RELAY_ARGS: list[str] = []
# `--native`: the relay runs without valgrind (no instruction counts), to check its drains.
NATIVE = False
STALL_SECONDS = 120.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--relay", required=True, type=Path)
    ap.add_argument("--drivers", default="uring,portable")
    ap.add_argument("--workloads", default="w1,w2")
    ap.add_argument("--n-w1", type=int, default=DEFAULT_N["w1"])
    ap.add_argument("--n-w2", type=int, default=DEFAULT_N["w2"])
    ap.add_argument("--repeat", type=int, default=1, help="runs per driver and workload")
    ap.add_argument("--idle-seconds", type=float, default=1.0)
    ap.add_argument("--thresholds", type=Path, required=True)
    ap.add_argument("--check", action="store_true", help="exit 1 if a figure is > tolerance above the file's")
    ap.add_argument("--update", action="store_true", help="write the figures into --thresholds")
    ap.add_argument("--lower-only", action="store_true",
                    help="with --update: write a figure only where it is below the committed one; keep the others")
    ap.add_argument("--annotate", type=int, default=0, help="top N functions of the W1 uring run")
    ap.add_argument("--json", type=Path, help="write every measurement here")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (dumps, logs)")
    ap.add_argument("--meta", default="{}", help="JSON merged into the output's context")
    ap.add_argument("--relay-arg", action="append", default=[],
                    help="an extra relay option (repeatable), e.g. --relay-arg=--metrics-prefix=eu: "
                         "never with --update (the thresholds are for the defaults)")
    ap.add_argument("--native", action="store_true",
                    help="run the relay without valgrind: no figures, only whether every drain delivers every line")
    ap.add_argument("--stall-seconds", type=float, default=120.0, help="a drain without progress this long stalls")
    ap.add_argument("--dump-instr", action="store_true",
                    help="count per instruction address too (callgrind --dump-instr=yes; with --keep, for bench/callgrind-hot.py)")
    a = ap.parse_args()
    global DUMP_INSTR, RELAY_ARGS, NATIVE, STALL_SECONDS
    DUMP_INSTR = a.dump_instr
    RELAY_ARGS = a.relay_arg
    NATIVE = a.native
    STALL_SECONDS = a.stall_seconds
    if NATIVE and (a.update or a.check):
        ap.error("--native measures no instructions: not with --update or --check")
    if RELAY_ARGS and a.update:
        ap.error("--relay-arg with --update: the thresholds are for the default options")

    work = Path(tempfile.mkdtemp(prefix="callgrind-"))
    # valgrind 3.19's DWARF reader gives up on Swift 6.3's debug info ("Possibly corrupted
    # debuginfo file"): run a copy without it (symbols stay, so the profile has names).
    relay = work / "statsrelay"
    subprocess.run(["objcopy", "--strip-debug", str(a.relay), str(relay)], check=True)
    sinks = Sinks()
    results = []
    stalls: list[str] = []
    began = time.monotonic()
    try:
        for rnd in range(a.repeat):
            for driver in a.drivers.split(","):
                for workload in a.workloads.split(","):
                    n = a.n_w1 if workload == "w1" else a.n_w2
                    for attempt in (1, 2):
                        try:
                            r = measure(relay, driver, workload, n, work, sinks, a.idle_seconds,
                                        rnd + 1 + 10 * (attempt - 1))
                            break
                        except Stalled as e:
                            print(f"retrying once: {e}", file=sys.stderr, flush=True)
                            # The stalled relay's own account at its exit: where the missing lines went.
                            print(f"  the stalled relay's counters: {exit_counters(work, driver, workload, rnd + 1 + 10 * (attempt - 1))}",
                                  file=sys.stderr, flush=True)
                            stalls.append(str(e))
                            if attempt == 2:
                                raise
                    r["attempt"] = attempt
                    r["round"] = rnd + 1
                    results.append(r)
                    print(f"{driver:8} {workload}  {r['ir_per_line']:8.1f} Ir/line  {r['ir_per_datagram']:9.1f} Ir/datagram"
                          f"  (drain {r['ir_drain']:,} - idle {r['ir_idle_scaled']:,}; {n} datagrams, {r['lines']} lines;"
                          f" rcvbuf errors {r['rcvbuf_errors_while_queueing']}; main thread in sigwait {r['main_thread_in_sigwait']};"
                          f" sigterm exit {r['sigterm_exit']};"
                          f" {'valid' if r['valid'] else 'INVALID'})", flush=True)
    finally:
        sinks.stop = True
    elapsed = time.monotonic() - began
    print(f"took {elapsed:.0f} s")

    figures: dict[str, dict] = {}
    for r in results:
        k = f"{r['driver']}/{r['workload']}"
        f = figures.setdefault(k, {"ir_per_line": [], "ir_per_datagram": [], "ir_drain": []})
        for key in f:
            f[key].append(r[key])
    profile = []
    if a.annotate:
        w1u = [r for r in results if r["driver"] == "uring" and r["workload"] == "w1"]
        if w1u:
            profile = annotate(w1u[0]["dump"], a.annotate)
            print(f"top {a.annotate} functions by instructions (exclusive), uring W1:")
            print("\n".join(profile))
    context = {"kernel": os.uname().release, "seconds": round(elapsed), **json.loads(a.meta),
               "valgrind": subprocess.run(["valgrind", "--version"], capture_output=True, text=True).stdout.strip()}
    if a.json:
        a.json.write_text(json.dumps({"context": context, "measurements": results, "profile": profile,
                                      "stalls": stalls}, indent=1) + "\n")

    invalid = [r for r in results if not r["valid"]]
    for r in invalid:
        print(f"INVALID: {r['driver']} {r['workload']}: rcvbuf errors {r['rcvbuf_errors_while_queueing']},"
              f" lines at sinks {r['lines_at_sinks']} of {r['lines']}", file=sys.stderr)
    status = 2 if invalid else 0

    if a.update and not invalid:
        measured = {k: {"ir_per_line": max(v["ir_per_line"]), "ir_per_datagram": max(v["ir_per_datagram"])}
                    for k, v in sorted(figures.items())}
        if a.lower_only:
            # A figure goes down when a change earned it; one that went up stays as committed
            # (raising it is a decision of its own: a plain --update).
            old = json.loads(a.thresholds.read_text())
            merged = dict(old["figures"])
            for k, v in measured.items():
                if k not in merged or v["ir_per_line"] < merged[k]["ir_per_line"]:
                    merged[k] = v
                    print(f"lowered {k}: {v['ir_per_line']:.1f} Ir/line")
                else:
                    print(f"kept {k}: committed {merged[k]['ir_per_line']:.1f} <= measured {v['ir_per_line']:.1f}")
            context = dict(context, lowered=sorted(k for k in measured if merged[k] is measured[k]),
                           kept_from=old.get("context", {}).get("commit"))
            measured = dict(sorted(merged.items()))
        doc = {
            "what": "user-space instructions (callgrind Ir) per line and per datagram, drain of N datagrams, "
                    "one worker, --admin none, sinks live; bench/callgrind.sh",
            "tolerance": 0.05,
            "context": context,
            "n": {"w1": a.n_w1, "w2": a.n_w2},
            "figures": measured,
        }
        a.thresholds.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {a.thresholds}")
    if a.check:
        doc = json.loads(a.thresholds.read_text())
        tol = doc.get("tolerance", 0.05)
        for k, v in sorted(figures.items()):
            ref = doc["figures"].get(k)
            if ref is None:
                print(f"{k}: no committed figure", file=sys.stderr)
                continue
            got = max(v["ir_per_line"])
            limit = ref["ir_per_line"] * (1 + tol)
            verdict = "ok" if got <= limit else "FAIL"
            print(f"check {k:14} {got:8.1f} Ir/line vs committed {ref['ir_per_line']:8.1f} (limit {limit:.1f}): {verdict}")
            if got > limit and status == 0:
                status = 1
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"work directory kept: {work}")
    return status


if __name__ == "__main__":
    sys.exit(main())
