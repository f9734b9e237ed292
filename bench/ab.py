#!/usr/bin/env python3
"""A/B of relay builds and io drivers, interleaved in one session so that every variant sees
the same machine: for each round, each variant runs once (run.py --runs 1) with the kernel
baseline measured beside it. Prints medians over the rounds of relayed lines/s, the ratio to
the first variant and to the kernel baseline of the same invocations, and CPU per million lines.

  ./ab.py --rounds 5 --threads 1,2 --workloads drain --compact \\
      old=/work/base/.build/release/statsrelay \\
      uring=../.build/release/statsrelay:uring portable=../.build/release/statsrelay:portable

A variant is LABEL=PATH[:IO_BACKEND]; the old binary has no --io-backend, so give none for it.
Every run.py result file is kept under --out/LABEL/ and the summary is written as JSON.
"""
import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="+", help="LABEL=PATH[:IO_BACKEND]; the first is the reference")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--workloads", default="drain")
    parser.add_argument("--compact", action="store_true")
    parser.add_argument("--baseline-mode", choices=["recvmmsg", "uring-recv"], default="recvmmsg",
                        help="run.py --baseline-mode: the kernel baseline every variant's run is measured beside")
    parser.add_argument("--live-rate", type=float, default=0, help="run.py --live-rate (live workloads; 0 = flat out)")
    parser.add_argument("--loadgen-batch", type=int, help="run.py --loadgen-batch")
    parser.add_argument("--loadgen-sockets", type=int, help="run.py --loadgen-sockets")
    parser.add_argument("--loadgen-cpus", help="run.py --loadgen-cpus (one pinned load generator per CPU)")
    parser.add_argument("--relay-args", help="run.py --relay-args, the same for every variant")
    parser.add_argument("--out", default=str(BENCH / "results" / "ab" / time.strftime("%Y-%m-%dT%H%M%S")))
    args = parser.parse_args()
    variants = []
    for spec in args.variants:
        label, _, rest = spec.partition("=")
        path, _, backend = rest.partition(":")
        variants.append((label, str(Path(path).resolve()), backend or None))
    out = Path(args.out)
    rows: dict[tuple, list] = {}
    for round_number in range(args.rounds):
        for label, path, backend in variants:
            target = out / label
            target.mkdir(parents=True, exist_ok=True)
            before = set(target.glob("*.json"))
            command = [sys.executable, str(BENCH / "run.py"), "--relay", path, "--runs", "1", "--threads", args.threads,
                       "--workloads", args.workloads, "--out", str(target)]
            if args.compact:
                command.append("--compact")
            command += ["--baseline-mode", args.baseline_mode]
            if args.live_rate:
                command += ["--live-rate", str(args.live_rate)]
            if args.loadgen_batch:
                command += ["--loadgen-batch", str(args.loadgen_batch)]
            if args.loadgen_sockets:
                command += ["--loadgen-sockets", str(args.loadgen_sockets)]
            if args.loadgen_cpus:
                command += ["--loadgen-cpus", args.loadgen_cpus]
            if args.relay_args:
                command += ["--relay-args", args.relay_args]
            if backend:
                command += ["--io-backend", backend]
            print(f"... round {round_number + 1}/{args.rounds} {label}", flush=True)
            # run.py exits 1 when a run saw a problem (kernel drops, say); its result is still
            # written, and the rows it marks invalid are skipped below.
            code = subprocess.run(command, stdout=subprocess.DEVNULL, timeout=1800).returncode
            if code != 0:
                print(f"    run.py exited {code} (see {target}); invalid rows are skipped", flush=True)
            result = json.loads(next(iter(set(target.glob("*.json")) - before)).read_text())
            # A baseline with no valid run has no rate to compare with: its ratio is left out.
            baselines = {(r["workload"], r["threads"]): r for r in result["summary"]
                         if r["target"] == "baseline" and r.get("valid_runs") and r.get("relayed_lines_per_s")}
            for row in result["summary"]:
                if row["target"] != "relay" or not row.get("valid_runs"):
                    continue
                base = baselines.get((row["workload"], 1)) or next(
                    (b for (w, _), b in baselines.items() if w == row["workload"]), None)
                rows.setdefault((label, row["workload"], row["threads"]), []).append({
                    "lines_per_s": row["relayed_lines_per_s"],
                    "cpu_per_million_lines": row["cpu_seconds_per_million_lines"],
                    "vs_kernel": row["relayed_lines_per_s"] / base["relayed_lines_per_s"] if base else None,
                    "setup": row.get("relay_setup"),
                })
    reference = variants[0][0]
    summary = []
    print(f"\n{'variant':10} {'workload':9} {'t':>2} {'n':>2} {'lines/s (median)':>17} {'x ' + reference:>10} {'x kernel':>9} {'CPU s/Ml':>9}")
    for (label, workload, threads), samples in sorted(rows.items(), key=lambda item: (item[0][1], item[0][2], item[0][0])):
        median = statistics.median(s["lines_per_s"] for s in samples)
        cpu = statistics.median(s["cpu_per_million_lines"] for s in samples)
        kernel = statistics.median(s["vs_kernel"] for s in samples if s["vs_kernel"] is not None)
        ref = rows.get((reference, workload, threads))
        ratio = median / statistics.median(s["lines_per_s"] for s in ref) if ref else None
        summary.append({"variant": label, "workload": workload, "threads": threads, "runs": len(samples),
                        "median_lines_per_s": median, "vs_reference": ratio, "vs_kernel_baseline": kernel,
                        "median_cpu_per_million_lines": cpu, "setup": samples[0]["setup"],
                        "all_lines_per_s": [s["lines_per_s"] for s in samples]})
        print(f"{label:10} {workload:9} {threads:>2} {len(samples):>2} {median:>17,.0f} "
              f"{(f'{ratio:.3f}' if ratio else '-'):>10} {kernel:>9.3f} {cpu:>9.3f}")
    (out / "summary.json").write_text(json.dumps({"variants": variants, "rounds": args.rounds, "compact": args.compact,
                                                   "baseline_mode": args.baseline_mode, "live_rate": args.live_rate,
                                                   "loadgen_batch": args.loadgen_batch,
                                                   "loadgen_sockets": args.loadgen_sockets,
                                                   "loadgen_cpus": args.loadgen_cpus, "relay_args": args.relay_args,
                                                   "threads": args.threads, "summary": summary}, indent=1))
    print(f"\nwrote {out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
