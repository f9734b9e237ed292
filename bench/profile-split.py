#!/usr/bin/env python3
"""Where a relay's CPU goes, from `perf record -g` samples: the relay's own code, the kernel's
receive, its send, the loopback delivery into the sinks' sockets, the wait, and the rest.

  bench/profile-split.py FILE.perf.data [FILE...] [--top 8]

The files come from `bench/run.py --perf-record DIR` (drain workloads: the relay's threads
sampled on `cpu-clock` from SIGCONT until it has sent everything). Each sample is put in one
class by its call chain, the first rule that matches:

  relay code      the sample's own frame is in user space (the relay, libc, vdso)
  loopback        the chain holds net_rx_action/process_backlog/__netif_receive_skb: a packet the
                  relay sent, delivered into a sink's socket in the sender's context
  send            the chain holds a send: udp_sendmsg, sock_sendmsg, io_send, sendmmsg
  receive         the chain holds a receive: udp_recvmsg, sock_recvmsg, io_recv, recvmmsg,
                  skb_consume_udp (the free of a received datagram)
  wait            io_cqring_wait, epoll_wait, schedule (the worker asking for more work)
  other kernel    everything else (syscall entry and exit, io_uring's own bookkeeping, timers)

Prints, per file group given, the samples in each class and their share, with the top kernel
functions of each class. `cpu-clock` samples in a VM land where interrupts are enabled again,
so a spin lock's time shows on its unlock: read the classes, not single functions.
"""
import argparse
import collections
import subprocess
import sys

RULES = [
    ("loopback", ("net_rx_action", "process_backlog", "__netif_receive_skb")),
    ("send", ("udp_sendmsg", "sock_sendmsg", "io_send", "__sys_sendmmsg", "__sys_sendmsg", "udpv6_sendmsg")),
    ("receive", ("udp_recvmsg", "sock_recvmsg", "io_recv", "do_recvmmsg", "skb_consume_udp", "__skb_recv_udp",
                 "udpv6_recvmsg")),
    ("wait", ("io_cqring_wait", "do_epoll_wait", "schedule", "ep_poll")),
]
CLASSES = ["relay code", "receive", "send", "loopback", "wait", "other kernel"]


def samples(path):
    """Yields each sample's frames, leaf first, as (symbol, is_kernel)."""
    output = subprocess.run(["perf", "script", "-i", path, "-F", "ip,sym,dso"], capture_output=True, text=True)
    if output.returncode != 0:
        sys.exit(f"perf script -i {path} failed: {output.stderr.strip()[:200]}")
    frames = []
    for line in output.stdout.splitlines():
        line = line.strip()
        if not line:
            if frames:
                yield frames
            frames = []
            continue
        parts = line.split(None, 1)
        if len(parts) < 2:
            continue
        rest = parts[1]
        symbol = rest.rsplit(" (", 1)[0].split("+0x")[0]
        frames.append((symbol, "[kernel.kallsyms]" in rest))
    if frames:
        yield frames


def classify(frames):
    """The class of one sample (see the module's doc)."""
    if not frames[0][1]:
        return "relay code"
    names = {symbol for symbol, kernel in frames if kernel}
    for name, markers in RULES:
        if any(marker in names for marker in markers):
            return name
    return "other kernel"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+")
    parser.add_argument("--top", type=int, default=5, help="kernel functions shown per class")
    args = parser.parse_args()
    counts = collections.Counter()
    leaves = collections.defaultdict(collections.Counter)
    for path in args.files:
        for frames in samples(path):
            kind = classify(frames)
            counts[kind] += 1
            leaves[kind][frames[0][0]] += 1
    total = sum(counts.values())
    if total == 0:
        sys.exit("no samples")
    print(f"{total} samples in {len(args.files)} file(s)")
    for kind in CLASSES:
        top = ", ".join(f"{name} {100 * n / total:.1f}" for name, n in leaves[kind].most_common(args.top))
        print(f"{kind:13} {counts[kind]:7} {100 * counts[kind] / total:5.1f} %   {top}")


if __name__ == "__main__":
    main()
