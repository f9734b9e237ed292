#!/usr/bin/env python3
"""Instruction addresses of one function in a callgrind dump made with --dump-instr=yes
(bench/callgrind.sh --dump-instr --keep), grouped by how often each ran: which code runs per
line, per datagram, per turn, and how many instructions each of those paths costs.

  bench/callgrind-hot.py DUMP FUNCTION_SUBSTRING [--min-count 1000]

Prints, per execution count (highest first), the number of instruction addresses that ran that
often and their Ir; then the addresses of the top groups (to read beside `objdump -d`).
"""
import argparse
import collections
import re
import sys


def parse(path, needle):
    counts = collections.Counter()
    names = {}
    current = None
    skip_next = False
    last = 0
    positions = 1
    for raw in open(path, errors="replace"):
        line = raw.rstrip("\n")
        if line.startswith("positions:"):
            positions = len(line.split()) - 1
            continue
        if line.startswith(("fn=", "fl=", "fi=", "fe=", "ob=", "cob=", "cfn=", "cfi=", "cfl=")):
            key, _, value = line.partition("=")
            m = re.match(r"\((\d+)\)(?: (.*))?", value)
            # A function's name is given once, where its number first appears: often in a
            # call's `cfn=` line before its own `fn=` block.
            if key in ("fn", "cfn") and m and m.group(2):
                names[m.group(1)] = m.group(2)
            if key == "fn":
                if m:
                    name = names.get(m.group(1), "")
                else:
                    name = value
                current = name if needle in name else None
            continue
        if line.startswith("calls="):
            skip_next = True
            continue
        if not line or not (line[0] in "+-*0123456789"):
            continue
        fields = line.split()
        pos = fields[0]
        if pos.startswith("0x"):
            addr = int(pos, 16)
        elif pos.startswith("+"):
            addr = last + int(pos[1:], 16 if pos[1:].startswith("0x") else 10)
        elif pos.startswith("-"):
            addr = last - int(pos[1:], 16 if pos[1:].startswith("0x") else 10)
        elif pos == "*":
            addr = last
        else:
            addr = int(pos)
        last = addr
        if skip_next:
            skip_next = False
            continue
        if current is not None and len(fields) > positions:
            counts[addr] += int(fields[positions])
    return counts


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dump")
    ap.add_argument("function")
    ap.add_argument("--min-count", type=int, default=1000)
    a = ap.parse_args()
    counts = parse(a.dump, a.function)
    if not counts:
        print("no instructions of that function in the dump (made with --dump-instr=yes?)", file=sys.stderr)
        return 1
    groups = collections.defaultdict(list)
    for addr, n in counts.items():
        groups[n].append(addr)
    print(f"total Ir {sum(counts.values()):,} over {len(counts)} addresses")
    for n in sorted(groups, reverse=True):
        if n < a.min_count:
            break
        addrs = sorted(groups[n])
        print(f"ran {n:>10,} times: {len(addrs):4} instructions = {n * len(addrs):>13,} Ir   {hex(addrs[0])}..{hex(addrs[-1])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
