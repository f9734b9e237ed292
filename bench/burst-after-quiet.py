#!/usr/bin/env python3
"""Kernel drops at a rate jump: a quiet rate long enough for the io_uring worker's minimum wait
to adapt up to its ceiling, then a burst flat out, repeated; the relay's
statsrelay.datagrams_dropped.kernel at exit is what its socket buffer could not hold. Builds are
interleaved round by round, each on one io_uring worker pinned to CPU 0, the sender and the sink
on CPU 1, every datagram to 127.0.0.1.

  ./burst-after-quiet.py --rounds 5 --cycles 4 --burst 3000 --rcvbuf 64K \\
      old=/work/old/release/statsrelay new=../.build/release/statsrelay

Bounded: each loadgen call by --count and --duration, the sink by --max-seconds.
"""
import argparse
import re
import signal
import statistics
import subprocess
import time
from pathlib import Path

TOOLS = Path(__file__).resolve().parent / ".build" / "release"


def run_once(relay: str, args: argparse.Namespace) -> tuple[int, int, str]:
    """One relay run: returns (datagrams sent, kernel drops, the start-up log's min_wait)."""
    sink = subprocess.Popen(
        ["taskset", "-c", "1", str(TOOLS / "benchsink"), "--ports", str(args.sink_port), "--max-seconds", "300"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    relay_process = subprocess.Popen(
        [relay, "--bind", "127.0.0.1", "--port", str(args.port), "--threads", "1", "--cpus", "0",
         "--io-backend", "uring", "--rcvbuf", args.rcvbuf, f"127.0.0.1:{args.sink_port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    sent = 0
    quiet = int(args.quiet_rate * args.quiet_seconds)
    for _ in range(args.cycles):
        for rate, count in ((args.quiet_rate, quiet), (0, args.burst)):
            subprocess.run(
                ["taskset", "-c", "1", str(TOOLS / "loadgen"), "--target", f"127.0.0.1:{args.port}",
                 "--rate", str(rate), "--count", str(count), "--duration", "30"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
            sent += count
    time.sleep(0.3)
    relay_process.send_signal(signal.SIGTERM)
    _, report = relay_process.communicate(timeout=30)
    sink.send_signal(signal.SIGTERM)
    sink.communicate(timeout=10)
    drops = re.search(r"datagrams_dropped\.kernel (\d+)", report)
    wait = re.search(r"min_wait=(\S+)", report)
    return sent, int(drops.group(1)) if drops else -1, wait.group(1) if wait else "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="+", help="LABEL=PATH of a relay binary")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cycles", type=int, default=4, help="quiet-then-burst cycles per run")
    parser.add_argument("--burst", type=int, default=3000, help="datagrams per burst, sent flat out")
    parser.add_argument("--quiet-rate", type=int, default=20000, help="datagrams/s between bursts")
    parser.add_argument("--quiet-seconds", type=float, default=1.0)
    parser.add_argument("--rcvbuf", default="64K")
    parser.add_argument("--port", type=int, default=18125)
    parser.add_argument("--sink-port", type=int, default=19001)
    args = parser.parse_args()
    variants = [variant.split("=", 1) for variant in args.variants]
    drops: dict[str, list[int]] = {label: [] for label, _ in variants}
    for round_index in range(args.rounds):
        for label, relay in variants:
            sent, dropped, wait = run_once(relay, args)
            drops[label].append(dropped)
            print(f"round {round_index} {label}: sent {sent}, kernel drops {dropped}, min_wait={wait}", flush=True)
    for label, values in drops.items():
        print(f"{label}: median kernel drops {statistics.median(values)} {values}")


if __name__ == "__main__":
    main()
