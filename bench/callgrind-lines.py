#!/usr/bin/env python3
"""Instructions of a callgrind dump by source line, with the chain of inlined calls each came
through: where a path's instructions go when everything is inlined into one function.

  bench/callgrind-lines.py DUMP BINARY_WITH_DEBUG_INFO [--per 200000] [--top 40] [--depth 4] [--symbols]

DUMP comes from `bench/callgrind.sh --dump-instr --keep` (the instruction addresses). valgrind
3.19 cannot read Swift 6.3's debug info, so callgrind.sh runs a copy stripped of it; the
addresses are those of the binary it was made from. Build that binary with line tables
(`swift build -c release -Xswiftc -g ...`: the same code, within 0.3 % of the instructions) and
pass it here: each address is looked up with `addr2line -i` (its source line and the lines it
was inlined through), for the binary's own code only (`ob=` the relay).

Prints the Ir (divided by --per: the lines or datagrams queued) by innermost source line, then
by chain of --depth lines, innermost first (`<compiler-generated>` is Swift's retain/release,
bounds and overflow checks, copies). With --symbols, by function symbol instead (`nm -S`, names
demangled by `swift demangle --simplified`): which out-of-line functions a path calls, and what
each costs.
"""
import argparse
import bisect
import collections
import re
import subprocess
import sys


def costs(path):
    """Ir by instruction address, for the objects named like the relay (`statsrelay`)."""
    names = {}
    current_object = None
    by_address = collections.Counter()
    address = 0
    positions = 1
    skip_next = False
    for raw in open(path, errors="replace"):
        line = raw.rstrip("\n")
        if line.startswith("positions:"):
            positions = len(line.split()) - 1
            continue
        if line.startswith(("ob=", "cob=")):
            key, _, value = line.partition("=")
            match = re.match(r"\((\d+)\)(?: (.*))?", value)
            if match and match.group(2):
                names[match.group(1)] = match.group(2)
            if key == "ob" and match:
                current_object = names.get(match.group(1))
            continue
        if line.startswith("calls="):
            skip_next = True  # the next cost line is the call's inclusive cost
            continue
        if not line or not (line[0].isdigit() or line[0] in "+-*"):
            continue
        fields = line.split()
        token = fields[0]
        # Callgrind writes instruction addresses absolute in hex (`0x6606f0`) or as a
        # difference from the previous one in decimal (`+4`, `-28`): read as hex, every
        # difference of 10 or more would shift the addresses after it.
        if token == "*":
            pass
        elif token[0] == "+":
            address += int(token[1:])
        elif token[0] == "-":
            address -= int(token[1:])
        else:
            address = int(token, 16)
        if skip_next:
            skip_next = False
            continue
        if current_object and current_object.endswith("statsrelay") and len(fields) > positions:
            by_address[address] += int(fields[positions])
    return by_address


def frames(binary, addresses):
    """Per address, its (function, file:line) frames, innermost first (`addr2line -i`)."""
    output = subprocess.run(
        ["addr2line", "-e", binary, "-i", "-f", "-C", "-a"] + [hex(a) for a in addresses],
        capture_output=True, text=True, check=True).stdout.split("\n")
    result = {}
    current = None
    index = 0
    while index < len(output):
        line = output[index]
        if line.startswith("0x"):
            current = int(line, 16)
            result[current] = []
            index += 1
        elif current is not None and index + 1 < len(output):
            location = output[index + 1].split("/")[-1].split(" ")[0]
            result[current].append((line, location))
            index += 2
        else:
            index += 1
    return result


def symbols(binary, by_address):
    """Ir by the function symbol (`nm -S` ranges) each address lies in."""
    ranges = []
    for line in subprocess.run(["nm", "-S", "--defined-only", binary], capture_output=True, text=True, check=True).stdout.splitlines():
        fields = line.split()
        if len(fields) == 4 and fields[2] in "tTwW":
            ranges.append((int(fields[0], 16), int(fields[1], 16), fields[3]))
    ranges.sort()
    starts = [start for start, _, _ in ranges]
    by_symbol = collections.Counter()
    for address, ir in by_address.items():
        index = bisect.bisect_right(starts, address) - 1
        if index >= 0 and address < ranges[index][0] + ranges[index][1]:
            by_symbol[ranges[index][2]] += ir
        else:
            by_symbol["?"] += ir
    return by_symbol


def demangled(names):
    """`swift demangle --simplified` of each name (unchanged where that is unavailable)."""
    try:
        output = subprocess.run(["swift", "demangle", "--simplified"], input="\n".join(names), capture_output=True,
                                text=True, check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return names
    return output if len(output) == len(names) else names


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dump")
    parser.add_argument("binary")
    parser.add_argument("--per", type=float, default=1.0, help="divide Ir by this (lines or datagrams queued)")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--depth", type=int, default=4, help="source lines shown per chain")
    parser.add_argument("--min", type=float, default=0.05, help="skip addresses under this many Ir per --per")
    parser.add_argument("--symbols", action="store_true", help="Ir by function symbol instead of by source line")
    args = parser.parse_args()
    by_address = costs(args.dump)
    if not by_address:
        sys.exit("no cost for the relay's own code: was the dump made with --dump-instr?")
    if args.symbols:
        top = symbols(args.binary, by_address).most_common(args.top)
        total = sum(by_address.values())
        print(f"relay's own code: {total / args.per:.1f} Ir per unit, by function symbol:")
        for (_, ir), name in zip(top, demangled([name for name, _ in top])):
            print(f"{ir / args.per:9.1f}  {name[:160]}")
        return
    kept = [a for a, ir in by_address.items() if ir / args.per >= args.min]
    located = frames(args.binary, kept)
    innermost = collections.Counter()
    chains = collections.Counter()
    for address in kept:
        chain = located.get(address) or [("?", "?")]
        innermost[chain[0][1]] += by_address[address]
        chains[" <- ".join(location for _, location in chain[:args.depth])] += by_address[address]
    total = sum(by_address.values())
    print(f"relay's own code: {total / args.per:.1f} Ir per unit ({sum(by_address[a] for a in kept) / args.per:.1f} listed)")
    print("\nby source line (innermost):")
    for location, ir in innermost.most_common(args.top):
        print(f"{ir / args.per:9.1f}  {location}")
    print(f"\nby chain of inlined calls ({args.depth} deep, innermost first):")
    for chain, ir in chains.most_common(args.top):
        print(f"{ir / args.per:9.1f}  {chain}")


if __name__ == "__main__":
    main()
