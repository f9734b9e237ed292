#!/usr/bin/env python3
"""Macro benchmark runner for statsrelay: loadgen -> relay -> benchsink on loopback, with a kernel baseline.

One command runs the selected workloads against the relay at each thread count and against
`kernelbaseline` (the bare recvmmsg path, or with --baseline-mode uring-recv a bare multishot io_uring
recv loop) in the same invocation, prints a table of medians and writes
every measurement to bench/results/<date>-<kernel>.json. See bench/README.md for what each figure means.

Traffic goes to 127.0.0.1 only. Every wait below is bounded in time; every loop is bounded in count.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
TOOLS_DIR = BENCH_DIR / ".build" / "release"
TOOLS = ("loadgen", "benchsink", "kernelbaseline")
LOOPBACK = "127.0.0.1"

# The relay's socket buffer request; the drain workloads are sized to fit in it.
RELAY_RCVBUF = 268_435_456
# Each sink socket's buffer request (the kernel doubles it); large, so the sinks never drop.
SINK_RCVBUF = 134_217_728
# Distinct source ports of the load generator: SO_REUSEPORT spreads flows, not datagrams, over the
# workers, so a handful of flows splits unevenly (16 gave one of two workers 56-75% of the load), while
# the many clients of a real fleet split evenly.
LOADGEN_SOCKETS = 256
# How long a sink or baseline waits after the last arrival before giving up on missing lines.
IDLE_EXIT_DRAIN = 3.0
IDLE_EXIT_LIVE = 1.5
# Hard bounds, seconds.
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
DRAIN_TIMEOUT = 120.0
# With the sinks paused, the relay has finished a drain once their queues stop growing for this long
# (several flush intervals).
RELAY_QUIET = 0.3


@dataclass(frozen=True)
class Workload:
    """One workload: how datagrams are shaped and whether they are queued first (drain) or streamed (live)."""

    name: str
    kind: str  # "drain" or "live"
    shape: str  # "w1" (one line per datagram) or "w2" (~1400-byte packed datagrams)
    mode: str  # loadgen --mode
    count: int  # loadgen --count
    duration: float  # loadgen --duration


def workloads(quick: bool) -> dict[str, Workload]:
    """The four workloads, at full size or, with --quick, small enough for a smoke test."""
    if quick:
        return {
            "drain-w1": Workload("drain-w1", "drain", "w1", "line", 100_000, 30.0),
            "drain-w2": Workload("drain-w2", "drain", "w2", "packed", 20_000, 30.0),
            "live-w1": Workload("live-w1", "live", "w1", "line", 2_000_000, 2.0),
            "live-w2": Workload("live-w2", "live", "w2", "packed", 400_000, 2.0),
        }
    return {
        "drain-w1": Workload("drain-w1", "drain", "w1", "line", 500_000, 60.0),
        "drain-w2": Workload("drain-w2", "drain", "w2", "packed", 150_000, 60.0),
        "live-w1": Workload("live-w1", "live", "w1", "line", 5_000_000, 5.0),
        "live-w2": Workload("live-w2", "live", "w2", "packed", 1_000_000, 5.0),
    }


def select_workloads(spec: str, table: dict[str, Workload]) -> list[Workload]:
    """Resolves --workloads: full names, or kinds (drain, live) and shapes (w1, w2) that are intersected."""
    tokens = [token.strip() for token in spec.split(",") if token.strip()]
    explicit = [token for token in tokens if token in table]
    kinds = [token for token in tokens if token in ("drain", "live")]
    shapes = [token for token in tokens if token in ("w1", "w2")]
    unknown = [token for token in tokens if token not in table and token not in kinds and token not in shapes]
    if unknown:
        sys.exit(f"run.py: unknown workload(s) {', '.join(unknown)}; use {', '.join(table)}, drain, live, w1, w2")
    chosen = set(explicit)
    if kinds or shapes:
        for workload in table.values():
            if (not kinds or workload.kind in kinds) and (not shapes or workload.shape in shapes):
                chosen.add(workload.name)
    return [workload for workload in table.values() if workload.name in chosen]


# ---------------------------------------------------------------------------------------------------------
# /proc readers


def monotonic() -> float:
    """CLOCK_MONOTONIC seconds, the clock the tools print their timestamps in."""
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def udp_counters() -> dict[str, int]:
    """The Udp line of /proc/net/snmp (network-namespace wide)."""
    with open("/proc/net/snmp") as file:
        lines = [line.split() for line in file if line.startswith("Udp:")]
    return {key: int(value) for key, value in zip(lines[0][1:], lines[1][1:])}


def udp_sockets() -> list[dict[str, int]]:
    """IPv4 UDP sockets from /proc/net/udp: local address and port, receive queue bytes and drops."""
    sockets = []
    with open("/proc/net/udp") as file:
        next(file)
        for line in file:
            fields = line.split()
            address, port = fields[1].split(":")
            sockets.append({
                "address": int(address, 16),
                "port": int(port, 16),
                "rx_queue": int(fields[4].split(":")[1], 16),
                "drops": int(fields[12]),
            })
    return sockets


def port_sockets(port: int) -> list[dict[str, int]]:
    """The UDP sockets bound to `port`."""
    return [sock for sock in udp_sockets() if sock["port"] == port]


def socket_drops(ports: list[int]) -> int:
    """Summed per-socket drops of the sockets bound to `ports`."""
    wanted = set(ports)
    return sum(sock["drops"] for sock in udp_sockets() if sock["port"] in wanted)


def proc_state(pid: int) -> str | None:
    """The one-letter scheduler state of `pid`, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            return file.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def proc_cpu(pid: int) -> dict:
    """CPU of a process two ways: utime+stime from /proc/PID/stat (10 ms ticks, exited threads included) and
    the nanosecond run time of each live thread from /proc/PID/task/*/schedstat."""
    with open(f"/proc/{pid}/stat") as file:
        fields = file.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    threads = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as file:
                threads[task] = int(file.read().split()[0])
        except (FileNotFoundError, ProcessLookupError, ValueError):
            pass
    return {"stat_seconds": (int(fields[11]) + int(fields[12])) / ticks, "threads_ns": threads}


def cpu_delta(before: dict, after: dict) -> tuple[float, str]:
    """CPU seconds between two proc_cpu snapshots: nanosecond schedstat when no thread came or went (exact),
    else the tick-based stat figure."""
    if before["threads_ns"] and before["threads_ns"].keys() == after["threads_ns"].keys():
        return (sum(after["threads_ns"].values()) - sum(before["threads_ns"].values())) / 1e9, "schedstat"
    return after["stat_seconds"] - before["stat_seconds"], "stat"


def vm_hwm_kb(pid: int) -> int | None:
    """Peak resident set size (VmHWM) of `pid` in KiB."""
    try:
        with open(f"/proc/{pid}/status") as file:
            for line in file:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return None


# ---------------------------------------------------------------------------------------------------------
# Processes


class Child:
    """A started process with stdout and stderr in files (pipes could fill and stall it)."""

    def __init__(self, name: str, argv: list[str], workdir: Path):
        self.name = name
        self.argv = argv
        self.stdout_path = workdir / f"{name}.out"
        self.stderr_path = workdir / f"{name}.err"
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.process = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        self.pid = self.process.pid
        LIVE_CHILDREN.append(self)

    def running(self) -> bool:
        """Whether the process has not exited yet."""
        return self.process.poll() is None

    def wait(self, timeout: float) -> int | None:
        """Waits up to `timeout` seconds; returns the exit code or None if still running."""
        try:
            return self.process.wait(timeout=max(timeout, 0.0))
        except subprocess.TimeoutExpired:
            return None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Sends `sig` (after SIGCONT, in case it is stopped) and waits; SIGKILL if it does not exit in time."""
        if self.running():
            try:
                os.kill(self.pid, signal.SIGCONT)
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass
            if self.wait(timeout) is None:
                self.process.kill()
                self.wait(STOP_TIMEOUT)
        self.forget()
        return self.process.returncode

    def forget(self) -> None:
        """Drops the child from the set stopped on exit, once it has exited by itself."""
        if self in LIVE_CHILDREN:
            LIVE_CHILDREN.remove(self)

    def json(self) -> dict | None:
        """The single JSON object the tool printed on stdout, if any."""
        text = self.stdout_path.read_text().strip()
        if not text:
            return None
        try:
            return json.loads(text.splitlines()[-1])
        except json.JSONDecodeError:
            return None

    def stderr_lines(self) -> list[str]:
        """The lines the process wrote to stderr so far."""
        return self.stderr_path.read_text(errors="replace").splitlines()


LIVE_CHILDREN: list[Child] = []


def stop_all_children() -> None:
    """Stops every process this runner started and that still runs."""
    for child in list(LIVE_CHILDREN):
        child.stop(signal.SIGTERM, timeout=2.0)


def wait_until(predicate, timeout: float, interval: float = 0.005) -> bool:
    """Polls `predicate` every `interval` seconds until it holds or `timeout` passes."""
    deadline = monotonic() + timeout
    while True:
        if predicate():
            return True
        if monotonic() >= deadline:
            return False
        time.sleep(interval)


def wait_listening(child: Child, ports: list[int], timeout: float = START_TIMEOUT) -> None:
    """Waits until every port in `ports` has a socket in /proc/net/udp; fails if the child exits first."""
    def ready() -> bool:
        if not child.running():
            raise RuntimeError(f"{child.name} exited with {child.process.returncode} before listening: "
                               + " | ".join(child.stderr_lines()[-5:]))
        bound = {sock["port"] for sock in udp_sockets()}
        return all(port in bound for port in ports)

    if not wait_until(ready, timeout):
        raise RuntimeError(f"{child.name} did not bind {ports} within {timeout} s")


def ensure_ports_free(ports: list[int]) -> None:
    """Refuses to start when something else already holds one of the ports."""
    busy = sorted({sock["port"] for sock in udp_sockets()} & set(ports))
    if busy:
        raise RuntimeError(f"UDP port(s) {busy} already in use; pick others with --port/--sink-ports")


def wait_stopped(child: Child, timeout: float = 2.0) -> bool:
    """Waits until the process is in job-control stop ('T')."""
    return wait_until(lambda: proc_state(child.pid) in ("T", "t", None), timeout, 0.001)


# ---------------------------------------------------------------------------------------------------------
# Measurements


def merge_loadgen(parts: list[dict]) -> dict:
    """The JSON of several loadgen processes (or dry runs) as if one had sent it all: counts and
    the wrapping line checksum summed, the send window from the first start to the last end."""
    if len(parts) == 1:
        return parts[0]
    merged = dict(parts[0])
    for key in ("datagrams_sent", "lines_sent", "bytes_sent", "sendmmsg_calls", "sendmmsg_errors"):
        if key in merged:
            merged[key] = sum(part[key] for part in parts)
    merged["line_checksum"] = f"{sum(int(part['line_checksum'], 16) for part in parts) % (1 << 64):016x}"
    if "start_monotonic" in merged:
        merged["start_monotonic"] = min(part["start_monotonic"] for part in parts)
        merged["end_monotonic"] = max(part["end_monotonic"] for part in parts)
        elapsed = merged["end_monotonic"] - merged["start_monotonic"]
        merged["seconds"] = elapsed
        merged["datagrams_per_s"] = merged["datagrams_sent"] / elapsed if elapsed > 0 else 0
        merged["lines_per_s"] = merged["lines_sent"] / elapsed if elapsed > 0 else 0
        merged["stopped_by"] = "count" if all(part["stopped_by"] == "count" for part in parts) else "duration"
        errors: dict[str, int] = {}
        for part in parts:
            for name, count in part.get("errors", {}).items():
                errors[name] = errors.get(name, 0) + count
        merged["errors"] = errors
    merged["processes"] = len(parts)
    return merged


class Bench:
    """Everything one invocation needs: tool paths, options, a scratch directory and the shared context."""

    def __init__(self, args: argparse.Namespace, workdir: Path):
        self.args = args
        self.workdir = workdir
        self.relay = Path(args.relay).resolve() if args.relay else None
        self.port = args.port
        self.sink_ports = [int(port) for port in args.sink_ports.split(",")]
        self.counter = 0
        self.plans: dict[str, dict] = {}
        self.context = context_info(self.relay)

    def path(self, tool: str) -> str:
        """The path of one of the bench tools."""
        return str(TOOLS_DIR / tool)

    def loadgen_argv(self, workload: Workload, dry_run: bool = False) -> list[str]:
        """The loadgen command line of a workload, aimed at the relay or baseline port: with
        --loadgen-cpus, that of each of its processes (its share of the count, rate and sockets)."""
        parts = len(self.args.loadgen_cpu_list) or 1
        argv = [self.path("loadgen"), "--target", f"{LOOPBACK}:{self.port}",
                "--count", str(workload.count // parts), "--duration", str(workload.duration),
                "--mode", workload.mode, "--size", "1400", "--names", str(self.args.names),
                "--batch", str(self.args.loadgen_batch), "--sockets", str(max(1, self.args.loadgen_sockets // parts)),
                "--seed", str(self.args.seed)]
        if workload.kind == "live" and self.args.live_rate > 0:
            argv += ["--rate", str(self.args.live_rate / parts)]
        if self.args.compact:
            argv.append("--compact")
        if dry_run:
            argv.append("--dry-run")
        return argv

    def plan(self, workload: Workload) -> dict:
        """What loadgen sends for a workload when the count bound ends it (from --dry-run; deterministic)."""
        if workload.name not in self.plans:
            output = subprocess.run(self.loadgen_argv(workload, dry_run=True), capture_output=True,
                                    text=True, timeout=120, check=True).stdout
            part = json.loads(output)
            # Every process of --loadgen-cpus sends the same datagrams (same seed and share).
            self.plans[workload.name] = merge_loadgen([part] * max(1, len(self.args.loadgen_cpu_list)))
        return self.plans[workload.name]

    def relay_argv(self, threads: int) -> list[str]:
        """The relay command line; its interface is fixed by the relay, --relay-args is appended."""
        argv = [str(self.relay), "--bind", LOOPBACK, "--port", str(self.port), "--threads", str(threads),
                "--rcvbuf", str(RELAY_RCVBUF), "--packet-len", "1400", "--flush-interval", "10ms"]
        if self.args.io_backend:
            argv += ["--io-backend", self.args.io_backend]
        argv += shlex.split(self.args.relay_args)
        argv += [f"{LOOPBACK}:{port}" for port in self.sink_ports]
        return argv

    def baseline_argv(self, expect: int, idle: float) -> list[str]:
        """The kernelbaseline command line, with the relay's buffer size and bounded by --max-seconds."""
        return [self.path("kernelbaseline"), "--port", str(self.port), "--rcvbuf", str(RELAY_RCVBUF),
                "--mode", self.args.baseline_mode,
                "--batch", "64", "--buffer-size", "2048", "--expect-datagrams", str(expect),
                "--idle-exit", str(idle), "--max-seconds", str(DRAIN_TIMEOUT + 60)]

    def sink_argv(self, expect_lines: int, idle: float) -> list[str]:
        """The benchsink command line for all sink ports."""
        return [self.path("benchsink"), "--ports", ",".join(map(str, self.sink_ports)),
                "--rcvbuf", str(SINK_RCVBUF), "--expect-lines", str(expect_lines),
                "--idle-exit", str(idle), "--max-seconds", str(DRAIN_TIMEOUT + 60)]

    def child(self, name: str, argv: list[str]) -> Child:
        """Starts a process whose output files are numbered in start order."""
        self.counter += 1
        return Child(f"{self.counter:03d}-{name}", argv, self.workdir)

    def run_loadgen(self, workload: Workload) -> dict:
        """Runs loadgen to completion (bounded) and returns its JSON: with --loadgen-cpus, one
        process pinned to each CPU listed, all at once, their JSON merged."""
        argv = self.loadgen_argv(workload)
        cpus = self.args.loadgen_cpu_list
        loadgens = [self.child(f"loadgen-cpu{cpu}", ["taskset", "-c", str(cpu)] + argv) for cpu in cpus] \
            or [self.child("loadgen", argv)]
        deadline = monotonic() + workload.duration + 60
        results = []
        for loadgen in loadgens:
            if loadgen.wait(deadline - monotonic()) is None:
                for running in loadgens:
                    running.stop()
                raise RuntimeError("loadgen did not finish within its duration + 60 s")
            result = loadgen.json()
            if loadgen.process.returncode != 0 or result is None:
                raise RuntimeError(f"loadgen failed ({loadgen.process.returncode}): "
                                   + " | ".join(loadgen.stderr_lines()[-5:]))
            loadgen.forget()
            results.append(result)
        return merge_loadgen(results) if cpus else results[0]

    def start_relay(self, threads: int) -> Child:
        """Starts the relay and waits until it listens."""
        relay = self.child(f"relay-t{threads}", self.relay_argv(threads))
        wait_listening(relay, [self.port])
        # A relay with one SO_REUSEPORT socket per thread binds them one after another: give the rest a
        # short, bounded chance to appear before traffic starts. A relay with one shared socket passes on.
        wait_until(lambda: len(port_sockets(self.port)) >= threads, 0.3)
        return relay

    def start_sinks(self, expect_lines: int, idle: float) -> Child:
        """Starts benchsink on the sink ports and waits until all of them listen."""
        ensure_ports_free(self.sink_ports)
        sinks = self.child("benchsink", self.sink_argv(expect_lines, idle))
        wait_listening(sinks, self.sink_ports)
        return sinks

    def measure(self, workload: Workload, target: str, threads: int, run: int) -> dict:
        """One measurement of `workload` against the relay (target 'relay') or the kernel baseline."""
        record = {
            "workload": workload.name, "kind": workload.kind, "shape": workload.shape, "target": target,
            "threads": threads, "run": run, "date": datetime.datetime.now().astimezone().isoformat(),
            "loadavg": Path("/proc/loadavg").read_text().split()[:3],
            "kernel": self.context["kernel"], "liburing": self.context["liburing"],
            "loadgen_args": self.loadgen_argv(workload)[1:], "loadgen_cpus": self.args.loadgen_cpu_list, "problems": [],
        }
        ensure_ports_free([self.port])
        try:
            if workload.kind == "drain":
                self.drain(workload, target, threads, record)
            else:
                self.live(workload, target, threads, record)
        finally:
            stop_all_children()
        derive(record)
        return record

    def drain(self, workload: Workload, target: str, threads: int, record: dict) -> None:
        """Queue N datagrams into the stopped receiver's socket buffer, then time the drain from SIGCONT."""
        plan = self.plan(workload)
        sinks, receiver = self.start_receivers(target, threads, plan, IDLE_EXIT_DRAIN, record)
        os.kill(receiver.pid, signal.SIGSTOP)
        if not wait_stopped(receiver):
            record["problems"].append("receiver did not reach the stopped state within 2 s")
        before = udp_counters()
        offered = self.run_loadgen(workload)
        queued = udp_counters()
        sockets = port_sockets(self.port)
        record["offered"] = offered
        record["queue_kernel_drops"] = queued["RcvbufErrors"] - before["RcvbufErrors"]
        record["queued_bytes"] = sum(sock["rx_queue"] for sock in sockets)
        # How SO_REUSEPORT spread the flows over the workers' sockets: the slowest share sets the time.
        record["queued_bytes_per_socket"] = sorted((sock["rx_queue"] for sock in sockets), reverse=True)
        if record["queue_kernel_drops"]:
            record["problems"].append(f"{record['queue_kernel_drops']} datagrams dropped while queueing: "
                                      "the receive buffer is too small for this N")
        if offered["datagrams_sent"] != plan["datagrams_sent"]:
            record["problems"].append("loadgen stopped on --duration before --count")
        pause_sinks = target == "relay" and not self.args.live_sinks
        if pause_sinks:
            # The sinks' own reading would compete with the relay for the cores; stopped, they leave the
            # relay alone with its work (which includes the loopback delivery into their sockets).
            os.kill(sinks.pid, signal.SIGSTOP)
            if not wait_stopped(sinks):
                record["problems"].append("sinks did not reach the stopped state within 2 s")
        record["sinks_paused"] = pause_sinks
        profiler = self.start_profiler(receiver.pid, workload, threads) if target == "relay" else None
        if profiler:
            record["perf_data"] = str(self.profile_path)
        cpu_before = proc_cpu(receiver.pid)
        offset_before = time.clock_gettime(time.CLOCK_REALTIME) - monotonic()
        started_realtime = time.clock_gettime(time.CLOCK_REALTIME)
        started = monotonic()
        os.kill(receiver.pid, signal.SIGCONT)
        record["cont_monotonic"] = started
        if target == "relay":
            if pause_sinks:
                if not self.wait_relay_quiet(started + DRAIN_TIMEOUT):
                    record["problems"].append(f"the relay did not finish sending within {DRAIN_TIMEOUT} s")
                self.stop_profiler(profiler)
                os.kill(sinks.pid, signal.SIGCONT)
            self.stop_profiler(profiler)  # with --live-sinks, it ran until here
            self.finish_relay(receiver, sinks, record, started + DRAIN_TIMEOUT, cpu_before)
            # The kernel stamped each datagram as it was queued on a sink socket: the drain ends when the
            # last one was queued, however late the sink read it.
            last_kernel = (record.get("sink") or {}).get("last_kernel_arrival")
            last = started + (last_kernel - started_realtime) if last_kernel else None
            # The stamps are CLOCK_REALTIME: a step of that clock during the drain (NTP) would skew
            # the time, so the run is flagged and left out if realtime moved against monotonic.
            step = abs(time.clock_gettime(time.CLOCK_REALTIME) - monotonic() - offset_before)
            if step > 0.001:
                record["clock_step_seconds"] = step
                record["problems"].append(f"CLOCK_REALTIME stepped by {step:.4f} s against CLOCK_MONOTONIC")
        else:
            if receiver.wait(DRAIN_TIMEOUT) is None:
                record["problems"].append(f"baseline did not drain within {DRAIN_TIMEOUT} s")
                receiver.stop()
            self.collect_baseline(receiver, record)
            last = (record.get("baseline") or {}).get("last_arrival")
        record["kernel_drops"] = udp_counters()["RcvbufErrors"] - before["RcvbufErrors"]
        record["elapsed_seconds"] = (last - started) if last else None

    def start_profiler(self, pid: int, workload: Workload, threads: int) -> subprocess.Popen | None:
        """`perf record` on the (stopped) relay's threads, into --perf-record DIR; None without it."""
        if not self.args.perf_record:
            return None
        directory = Path(self.args.perf_record)
        directory.mkdir(parents=True, exist_ok=True)
        self.profile_runs = getattr(self, "profile_runs", 0) + 1
        self.profile_path = directory / f"{workload.name}-t{threads}-{self.profile_runs}.perf.data"
        # Under SCHED_FIFO where allowed: with every vCPU busy relaying, a perf at normal
        # priority could not empty its buffers and lost most samples of a two-worker drain.
        command = ["perf", "record", "-q", "-g", "-e", "cpu-clock", "-F", "4000", "-p", str(pid),
                   "-o", str(self.profile_path)]
        if os.geteuid() == 0 and shutil.which("chrt"):
            command = ["chrt", "-f", "20"] + command
        profiler = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Attached once it has written its file's header (the relay is stopped meanwhile).
        deadline = monotonic() + 5
        while not self.profile_path.exists() and profiler.poll() is None and monotonic() < deadline:
            time.sleep(0.01)
        return profiler

    @staticmethod
    def stop_profiler(profiler: subprocess.Popen | None) -> None:
        """Ends a `perf record` (SIGINT writes its file) within 10 s."""
        if profiler is None:
            return
        profiler.send_signal(signal.SIGINT)
        try:
            profiler.wait(10)
        except subprocess.TimeoutExpired:
            profiler.kill()

    def wait_relay_quiet(self, deadline: float) -> bool:
        """Waits until the relay's socket is empty and the sinks' queues stop growing for RELAY_QUIET seconds."""
        sink_ports = set(self.sink_ports)
        last_sizes: list[int] | None = None
        quiet_since = monotonic()
        while monotonic() < deadline:
            sockets = udp_sockets()
            relay_queue = sum(sock["rx_queue"] for sock in sockets if sock["port"] == self.port)
            sizes = sorted(sock["rx_queue"] for sock in sockets if sock["port"] in sink_ports)
            now = monotonic()
            if relay_queue or sizes != last_sizes:
                last_sizes, quiet_since = sizes, now
            elif now - quiet_since >= RELAY_QUIET:
                return True
            time.sleep(0.01)
        return False

    def live(self, workload: Workload, target: str, threads: int, record: dict) -> None:
        """Stream flat out (or at --live-rate) for the workload's duration and count what arrives."""
        plan = self.plan(workload)
        sinks, receiver = self.start_receivers(target, threads, plan, IDLE_EXIT_LIVE, record)
        before = udp_counters()
        cpu_before = proc_cpu(receiver.pid)
        offered = self.run_loadgen(workload)
        record["offered"] = offered
        deadline = monotonic() + IDLE_EXIT_LIVE + 30
        if target == "relay":
            self.finish_relay(receiver, sinks, record, deadline, cpu_before)
            last = (record.get("sink") or {}).get("last_arrival")
        else:
            if receiver.wait(deadline - monotonic()) is None:
                receiver.stop()
            self.collect_baseline(receiver, record)
            last = (record.get("baseline") or {}).get("last_arrival")
        record["kernel_drops"] = udp_counters()["RcvbufErrors"] - before["RcvbufErrors"]
        record["elapsed_seconds"] = (last - offered["start_monotonic"]) if last else None

    def start_receivers(self, target: str, threads: int, plan: dict, idle: float,
                        record: dict) -> tuple[Child | None, Child]:
        """Starts the sinks and the relay, or the baseline alone; records the receiver's command line as flags."""
        if target == "relay":
            sinks = self.start_sinks(plan["lines_sent"], idle)
            receiver = self.start_relay(threads)
        else:
            sinks = None
            receiver = self.child("kernelbaseline", self.baseline_argv(plan["datagrams_sent"], idle))
            wait_listening(receiver, [self.port])
        record["flags"] = receiver.argv[1:]
        return sinks, receiver

    def finish_relay(self, relay: Child, sinks: Child, record: dict, deadline: float, cpu_before: dict) -> None:
        """Waits for the sinks (all lines, or idle), reads the relay's CPU, RSS and socket drops, stops it."""
        if sinks.wait(deadline - monotonic()) is None:
            record["problems"].append("sinks did not see every line before the deadline")
            sinks.stop()
        record["sink"] = sinks.json()
        if record["sink"] is None:
            record["problems"].append(f"benchsink printed no result ({sinks.process.returncode})")
        if relay.running():
            cpu_after = proc_cpu(relay.pid)
            record["cpu_seconds"], record["cpu_source"] = cpu_delta(cpu_before, cpu_after)
            record["peak_rss_kb"] = vm_hwm_kb(relay.pid)
            record["relay_socket_drops"] = socket_drops([self.port])
            record["relay_exit_code"] = relay.stop(signal.SIGTERM)
            if record["relay_exit_code"] != 0:
                record["problems"].append(f"relay exited with {record['relay_exit_code']} on SIGTERM")
        else:
            record["relay_exit_code"] = relay.process.returncode
            record["problems"].append(f"relay died during the run (exit {relay.process.returncode})")
        lines = relay.stderr_lines()
        # What the relay's start-up lines say it set up: io driver, ring flags, minimum wait, buffers.
        for line in lines[:15]:
            for field in line.split():
                key, _, value = field.partition("=")
                if key in ("io_backend", "ring_flags", "min_wait", "receive_buffers", "send_slots", "rcvbuf_obtained") and value:
                    record.setdefault("relay_setup", {})[key] = value
        record["relay_stderr_head"] = lines[:15]
        record["relay_stderr_tail"] = lines[-15:] if len(lines) > 15 else []

    def collect_baseline(self, baseline: Child, record: dict) -> None:
        """Takes the exited baseline's JSON: its CPU while receiving, peak RSS and socket drops."""
        result = baseline.json()
        record["baseline"] = result
        baseline.forget()
        if result is None:
            record["problems"].append(f"kernelbaseline printed no result ({baseline.process.returncode})")
            return
        record["cpu_seconds"] = result["cpu_seconds"] - result.get("cpu_seconds_setup", 0.0)
        record["cpu_source"] = "getrusage"
        record["peak_rss_kb"] = result["max_rss_kb"]
        record["relay_socket_drops"] = result.get("socket_drops")


def derive(record: dict) -> None:
    """Adds the headline figures of one measurement: rates, losses and CPU per million lines."""
    offered = record.get("offered") or {}
    sent_lines = offered.get("lines_sent", 0)
    sent_datagrams = offered.get("datagrams_sent", 0)
    elapsed = record.get("elapsed_seconds")
    record["offered_lines_per_s"] = offered.get("lines_per_s")
    record["offered_datagrams_per_s"] = offered.get("datagrams_per_s")
    if record["target"] == "relay":
        sink = record.get("sink") or {}
        totals = sink.get("totals") or {}
        lines = totals.get("lines", 0)
        # The relay's input datagrams are those the generator sent minus what the kernel dropped before it.
        datagrams_in = sent_datagrams - (record.get("relay_socket_drops") or 0)
        record["lines_received"] = lines
        record["output_datagrams"] = totals.get("datagrams", 0)
        record["malformed"] = sink.get("malformed")
        record["checksum_match"] = sink.get("line_checksum") == offered.get("line_checksum")
        record["sink_socket_drops"] = sink.get("socket_drops")
        if sink.get("malformed"):
            record["problems"].append(f"{sink['malformed']} malformed lines, e.g. "
                                      + str(next((p["malformed_sample"] for p in sink["ports"].values()
                                                  if p.get("malformed_sample")), "")))
        if sink.get("socket_drops"):
            record["problems"].append(f"sinks dropped {sink['socket_drops']} datagrams: the sink was a bottleneck")
    else:
        baseline = record.get("baseline") or {}
        datagrams_in = baseline.get("datagrams", 0)
        # kernelbaseline does not parse; a datagram carries lines_sent/datagrams_sent lines on average.
        lines = round(datagrams_in * sent_lines / sent_datagrams) if sent_datagrams else 0
        record["lines_received"] = lines
        record["output_datagrams"] = None
        record["malformed"] = None
        record["checksum_match"] = None
        record["sink_socket_drops"] = None
    record["lines_lost"] = sent_lines - lines if offered else None
    if elapsed and elapsed > 0:
        record["relayed_lines_per_s"] = lines / elapsed
        record["relayed_datagrams_per_s"] = datagrams_in / elapsed
    else:
        record["relayed_lines_per_s"] = None
        record["relayed_datagrams_per_s"] = None
    cpu = record.get("cpu_seconds")
    record["cpu_seconds_per_million_lines"] = cpu / lines * 1e6 if cpu is not None and lines else None
    if record["lines_lost"]:
        record["problems"].append(f"{record['lines_lost']} lines lost")
    queued = record.get("queued_bytes_per_socket") or []
    record["busiest_socket_share"] = max(queued) / sum(queued) if len(queued) > 1 and sum(queued) else None
    record["valid"] = not record.get("queue_kernel_drops") and record.get("elapsed_seconds") is not None
    if record["kind"] == "drain" and elapsed is not None and elapsed <= 0:
        # The receiver took the datagrams while they were offered, not after SIGCONT (seen once with
        # the io_uring baseline: 0 bytes queued, its last arrival before the continue): no drain.
        record["valid"] = False
        record["problems"].append(f"drain ended {-elapsed:.4f} s before the receiver was continued: "
                                  f"it was not stopped while the load was queued ({record.get('queued_bytes')} bytes queued)")
    if record["kind"] == "drain" and record["target"] == "relay":
        # A drain that lost or mangled lines ends sooner and would overstate the rate; its time
        # also needs a kernel stamp on every datagram and a clock that did not step.
        sink = record.get("sink") or {}
        record["valid"] = (record["valid"] and record.get("lines_lost") == 0 and record.get("checksum_match") is True
                           and not record.get("sink_socket_drops") and not sink.get("untimestamped")
                           and not record.get("clock_step_seconds"))
        if sink.get("untimestamped"):
            record["problems"].append(f"{sink['untimestamped']} datagrams reached the sinks without a kernel timestamp")


# ---------------------------------------------------------------------------------------------------------
# Summary

FIGURES = ["offered_lines_per_s", "offered_datagrams_per_s", "relayed_lines_per_s", "relayed_datagrams_per_s",
           "lines_lost", "kernel_drops", "relay_socket_drops", "sink_socket_drops", "elapsed_seconds",
           "cpu_seconds", "cpu_seconds_per_million_lines", "peak_rss_kb", "malformed", "busiest_socket_share"]
RATIOS = {"relayed_lines_per_s": "lines_per_s", "relayed_datagrams_per_s": "datagrams_per_s",
          "cpu_seconds_per_million_lines": "cpu_per_million_lines", "peak_rss_kb": "peak_rss"}


def median_of(records: list[dict], key: str):
    """The median of `key` over the records that have it, or None."""
    values = [record[key] for record in records if record.get(key) is not None]
    return statistics.median(values) if values else None


def summarize(records: list[dict]) -> list[dict]:
    """Medians per (workload, target, threads) over the valid runs, with ratios to the baseline's medians."""
    groups: dict[tuple, list[dict]] = {}
    for record in records:
        groups.setdefault((record["workload"], record["target"], record["threads"]), []).append(record)
    rows = []
    for (workload, target, threads), group in groups.items():
        valid = [record for record in group if record["valid"]] or group
        row = {"workload": workload, "target": target, "threads": threads, "runs": len(group),
               "valid_runs": sum(record["valid"] for record in group),
               "problems": sorted({problem for record in group for problem in record["problems"]}),
               "kernel": group[0]["kernel"], "liburing": group[0]["liburing"], "flags": group[0]["flags"],
               "relay_setup": group[0].get("relay_setup")}
        for key in FIGURES:
            row[key] = median_of(valid, key)
        rows.append(row)
    baselines = {row["workload"]: row for row in rows if row["target"] == "baseline"}
    for row in rows:
        base = baselines.get(row["workload"])
        row["vs_baseline"] = {}
        if row["target"] == "relay" and base:
            for key, name in RATIOS.items():
                if row.get(key) is not None and base.get(key):
                    row["vs_baseline"][name] = row[key] / base[key]
    # Scaling: each relay row against the same workload's one-worker row of this run.
    single = {row["workload"]: row for row in rows if row["target"] == "relay" and row["threads"] == 1}
    for row in rows:
        one = single.get(row["workload"])
        row["vs_one_thread"] = None
        if row["target"] == "relay" and one and row.get("relayed_lines_per_s") and one.get("relayed_lines_per_s"):
            row["vs_one_thread"] = row["relayed_lines_per_s"] / one["relayed_lines_per_s"]
    return rows


def human(value, scale: float = 1.0, digits: int = 0) -> str:
    """Formats a figure for the table with thousands separators; None prints as '-'."""
    if value is None:
        return "-"
    value = value / scale
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def print_table(rows: list[dict]) -> None:
    """Prints the summary rows as an aligned table, then every problem seen."""
    header = ["workload", "target", "offered l/s", "relayed l/s", "relayed dg/s", "lost lines", "kdrops",
              "time s", "CPU s/Ml", "RSS MiB", "x l/s", "x CPU", "x t=1", "busiest"]
    table = [header]
    for row in rows:
        ratios = row["vs_baseline"]
        table.append([
            row["workload"],
            "baseline" if row["target"] == "baseline" else f"relay t={row['threads']}",
            human(row["offered_lines_per_s"]),
            human(row["relayed_lines_per_s"]),
            human(row["relayed_datagrams_per_s"]),
            human(row["lines_lost"]),
            human(row["kernel_drops"]),
            human(row["elapsed_seconds"], digits=3),
            human(row["cpu_seconds_per_million_lines"], digits=3),
            human(row["peak_rss_kb"], 1024, 1),
            human(ratios.get("lines_per_s"), digits=2),
            human(ratios.get("cpu_per_million_lines"), digits=2),
            human(row.get("vs_one_thread"), digits=2),
            human(row.get("busiest_socket_share"), 0.01, 0) + ("%" if row.get("busiest_socket_share") else ""),
        ])
    widths = [max(len(line[column]) for line in table) for column in range(len(header))]
    for index, line in enumerate(table):
        print("  ".join(cell.rjust(width) if column > 1 else cell.ljust(width)
                        for column, (cell, width) in enumerate(zip(line, widths))))
        if index == 0:
            print("  ".join("-" * width for width in widths))
    setups = sorted({json.dumps(row["relay_setup"], sort_keys=True) for row in rows if row.get("relay_setup")})
    for setup in setups:
        print("relay set-up: " + " ".join(f"{key}={value}" for key, value in json.loads(setup).items()))
    for row in rows:
        for problem in row["problems"]:
            print(f"! {row['workload']} {row['target']} t={row['threads']}: {problem}")


# ---------------------------------------------------------------------------------------------------------
# Setup


def command_output(argv: list[str]) -> str | None:
    """The stripped stdout of a short command, or None if it fails."""
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def context_info(relay: Path | None) -> dict:
    """What every result records about the machine and the relay binary."""
    liburing = command_output(["dpkg-query", "-W", "-f", "${Version}", "liburing-dev"])
    cpu_model = None
    with open("/proc/cpuinfo") as file:
        for line in file:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    info = {
        "kernel": os.uname().release,
        "liburing": f"liburing-dev {liburing}" if liburing else None,
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model,
        "git_commit": command_output(["git", "-C", str(BENCH_DIR), "rev-parse", "HEAD"]),
        "rmem_max": int(Path("/proc/sys/net/core/rmem_max").read_text()),
        "udp_mem": Path("/proc/sys/net/ipv4/udp_mem").read_text().split(),
    }
    if relay and relay.exists():
        digest = hashlib.sha256(relay.read_bytes()).hexdigest()
        info["relay"] = {"path": str(relay), "sha256": digest,
                         "mtime": datetime.datetime.fromtimestamp(relay.stat().st_mtime).astimezone().isoformat()}
    return info


def ensure_tools(build: bool) -> None:
    """Builds the bench tools in release mode when one is missing, unless told not to."""
    missing = [tool for tool in TOOLS if not (TOOLS_DIR / tool).exists()]
    if not missing:
        return
    if not build:
        sys.exit(f"run.py: missing {', '.join(missing)} in {TOOLS_DIR}; run: cd {BENCH_DIR} && swift build -c release")
    print(f"building {', '.join(missing)} (swift build -c release --product ...) ...", file=sys.stderr)
    # Product by product: a plain `swift build` would also build the micro-benchmarks (Benchmarks/),
    # which link the relay's library and ordo-one/benchmark and are not needed here.
    for tool in missing:
        subprocess.run(["swift", "build", "-c", "release", "--package-path", str(BENCH_DIR), "--product", tool],
                       check=True, timeout=1800)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parses and checks the command line; --quick changes only the defaults not given explicitly."""
    parser = argparse.ArgumentParser(
        description="Run the statsrelay macro benchmarks (loadgen -> relay -> benchsink) with a kernel baseline.")
    parser.add_argument("--relay", default=str(BENCH_DIR.parent / ".build" / "release" / "statsrelay"),
                        help="relay binary (default: ../.build/release/statsrelay relative to bench/)")
    parser.add_argument("--threads", help="comma-separated relay --threads values (default 1,2; --quick: 1)")
    parser.add_argument("--runs", type=int, help="runs per measurement, the median is reported (default 3; --quick: 1)")
    parser.add_argument("--workloads", default="w1,w2,drain,live",
                        help="drain-w1,drain-w2,live-w1,live-w2, or kinds/shapes drain,live,w1,w2 (intersected)")
    parser.add_argument("--quick", action="store_true", help="small sizes; one run and one thread unless given")
    parser.add_argument("--baseline-only", action="store_true", help="measure only the kernel baseline")
    parser.add_argument("--port", type=int, default=18125, help="relay/baseline UDP port (default 18125)")
    parser.add_argument("--sink-ports", default="9001,9002,9003", help="benchsink ports (default 9001,9002,9003)")
    parser.add_argument("--io-backend", choices=["auto", "uring", "portable"],
                        help="the relay's --io-backend (default: the relay's own default, auto); recorded as a flag")
    parser.add_argument("--relay-args", default="", help="extra relay arguments, shell-quoted, recorded as flags")
    parser.add_argument("--live-rate", type=float, default=0, help="loadgen --rate for live workloads (0 = flat out)")
    parser.add_argument("--names", type=int, default=10000, help="distinct metric names (default 10000)")
    parser.add_argument("--compact", action="store_true",
                        help="loadgen --compact: shorter names, ~45 lines per 1400-byte datagram (issue 3's W2) instead of ~36")
    parser.add_argument("--loadgen-batch", type=int, default=64,
                        help="datagrams per sendmmsg(2) call (default 64); with --live-rate, small batches "
                             "make arrivals smoother, as from many clients")
    parser.add_argument("--loadgen-sockets", type=int, default=LOADGEN_SOCKETS,
                        help=f"the load generator's sending sockets (distinct source ports, default {LOADGEN_SOCKETS}); "
                             "1 is one busy client, which SO_REUSEPORT's hash keeps on one worker")
    parser.add_argument("--loadgen-cpus", default="",
                        help="comma-separated CPUs: run one load generator per CPU, pinned there (taskset), "
                             "each sending its share of the count, rate and sockets at once, so datagrams "
                             "arrive on every CPU listed (on loopback the kernel receives a datagram on its "
                             "sender's CPU); default: one process where the scheduler puts it")
    parser.add_argument("--live-sinks", action="store_true",
                        help="drain: let the sinks read while the relay drains (by default they are stopped until "
                             "the relay is done, so they do not compete for the cores; the time is the kernel's "
                             "arrival stamp of the last datagram either way)")
    parser.add_argument("--baseline-mode", choices=["recvmmsg", "uring-recv"], default="recvmmsg",
                        help="how the kernel baseline receives: recvmmsg(2), 64 a call (default; the portable "
                             "driver's receive), or one multishot io_uring recv on 128 provided buffers waiting "
                             "for 32 completions (the io_uring driver's receive)")
    parser.add_argument("--seed", type=int, default=1, help="loadgen seed (default 1)")
    parser.add_argument("--out", default=str(BENCH_DIR / "results"), help="directory for the JSON result")
    parser.add_argument("--no-build", action="store_true", help="fail instead of building missing bench tools")
    parser.add_argument("--keep-logs", action="store_true", help="keep the tools' stdout/stderr files")
    parser.add_argument("--perf-record", metavar="DIR",
                        help="drain: sample the relay with `perf record -e cpu-clock` (user and kernel, "
                             "its threads only) from SIGCONT until it is done, one perf.data per run in DIR "
                             "(read with `perf report -i FILE --sort sym`); the CPU it costs is in the figures")
    args = parser.parse_args(argv)
    if args.threads is None:
        args.threads = "1" if args.quick else "1,2"
    if args.runs is None:
        args.runs = 1 if args.quick else 3
    try:
        args.loadgen_cpu_list = [int(value) for value in args.loadgen_cpus.split(",") if value.strip()]
    except ValueError:
        parser.error("--loadgen-cpus takes comma-separated CPU numbers")
    if args.loadgen_cpu_list and args.loadgen_sockets < len(args.loadgen_cpu_list):
        parser.error("--loadgen-cpus needs at least one sending socket per CPU (--loadgen-sockets)")
    if args.loadgen_batch < 1 or args.loadgen_batch > 1024:
        parser.error("--loadgen-batch must be within 1..1024")
    if args.runs < 1 or args.runs > 50:
        parser.error("--runs must be within 1..50")
    try:
        args.thread_counts = [int(value) for value in args.threads.split(",") if value.strip()]
    except ValueError:
        parser.error("--threads takes comma-separated integers")
    if not args.thread_counts or any(count < 1 or count > 64 for count in args.thread_counts):
        parser.error("--threads values must be within 1..64")
    return args


def interrupt(signum, frame) -> None:
    """Turns SIGTERM into KeyboardInterrupt, so the started processes are stopped on the way out."""
    raise KeyboardInterrupt


def main(argv: list[str]) -> int:
    """Runs every selected measurement, prints the table and writes the JSON; 1 if any run was invalid."""
    args = parse_args(argv)
    if not args.baseline_only and not Path(args.relay).exists():
        sys.exit(f"run.py: relay binary {args.relay} not found; build it (swift build -c release in the repo "
                 "root), pass --relay PATH, or measure only the baseline with --baseline-only")
    ensure_tools(not args.no_build)
    selected = select_workloads(args.workloads, workloads(args.quick))
    parts = len(args.loadgen_cpu_list)
    if parts and any(workload.count % parts for workload in selected):
        sys.exit(f"run.py: --loadgen-cpus splits each workload's count over {parts} processes; "
                 f"counts {[workload.count for workload in selected]} do not divide")
    workdir = Path(tempfile.mkdtemp(prefix="statsrelay-bench-"))
    bench = Bench(args, workdir)
    if args.baseline_only:
        bench.relay = None
    records: list[dict] = []
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        for run in range(1, args.runs + 1):
            for workload in selected:
                targets = [("baseline", 1)]
                if not args.baseline_only:
                    targets += [("relay", threads) for threads in args.thread_counts]
                for target, threads in targets:
                    label = f"run {run}/{args.runs} {workload.name} {target}" + \
                        (f" t={threads}" if target == "relay" else "")
                    print(f"... {label}", file=sys.stderr, flush=True)
                    try:
                        record = bench.measure(workload, target, threads, run)
                    except (RuntimeError, subprocess.SubprocessError, OSError) as error:
                        print(f"!!! {label}: {error}", file=sys.stderr)
                        record = {"workload": workload.name, "kind": workload.kind, "shape": workload.shape,
                                  "target": target, "threads": threads, "run": run, "valid": False,
                                  "problems": [f"failed: {error}"], "kernel": bench.context["kernel"],
                                  "liburing": bench.context["liburing"], "flags": []}
                    records.append(record)
    except KeyboardInterrupt:
        print("interrupted; writing what was measured", file=sys.stderr)
    finally:
        stop_all_children()
        signal.signal(signal.SIGTERM, previous)
    rows = summarize(records)
    print()
    print(f"kernel {bench.context['kernel']}, {bench.context['liburing']}, {bench.context['cpus']} CPUs, "
          f"runs {args.runs} (median), relay {bench.relay if bench.relay else '(baseline only)'}, "
          f"drain sinks {'live' if args.live_sinks else 'paused'}{', compact W2' if args.compact else ''}")
    print_table(rows)
    now = datetime.datetime.now().astimezone()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{now:%Y-%m-%dT%H%M%S}-{bench.context['kernel']}.json"
    result = {"date": now.isoformat(), "context": bench.context,
              "options": {key: value for key, value in vars(args).items()},
              "workloads": {workload.name: vars(workload) for workload in selected},
              "constants": {"relay_rcvbuf": RELAY_RCVBUF, "sink_rcvbuf": SINK_RCVBUF,
                            "loadgen_sockets": args.loadgen_sockets},
              "summary": rows, "measurements": records}
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}")
    if args.keep_logs:
        print(f"logs in {workdir}")
    else:
        for path in workdir.iterdir():
            path.unlink()
        workdir.rmdir()
    return 0 if records and all(record["valid"] for record in records) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
