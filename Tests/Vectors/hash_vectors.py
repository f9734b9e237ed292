#!/usr/bin/env python3
"""Writes hash-vectors.tsv: what the etsy and ketama hash rings, built from their published
definitions with Python's own hashlib.md5, answer for a fixed set of backends and names.

This is the independent implementation the Swift tests compare against; it shares no code with
the relay. Run it from anywhere: `python3 Tests/Vectors/hash_vectors.py`. The output is
deterministic, so a rerun that changes the file means a definition here changed. Two further
checks of the file, each in the language whose arithmetic the peer uses: `node check_etsy.js`
(the whole etsy algorithm) and `check_ketama_points.c` (twemproxy's float point count).

The definitions:

etsy  node `hashring` 3.x (index.js), configured as etsy statsd's proxy.js configures it:
      `new hashring({"host:port": 100, ...}, 'md5', {'replicas': 0})`. Replicas 0 is raised to 1,
      so each virtual node gives one point. A server of weight w out of a total W among n servers
      gets Math.floor(w / W * 40 * n) points (IEEE doubles, left to right: 39 for each of 7 equal
      servers). Point i of server "host:port" is md5("host:port-i"), its first 4 bytes read
      little-endian. Points are sorted ascending, ties kept in insertion order (V8's sort is
      stable). A key's value is md5(key), first 4 bytes little-endian; its server owns the first
      point >= the value, wrapping to the first point (libketama's binary search).

ketama twemproxy's nc_ketama.c with `hash: md5`: a server of weight w out of a total W among n
      live servers gets floorf((float)(pct * 160 / 4 * (float)n + 1e-10)) * 4 points, where
      pct = (float)w / (float)W and every operation but the addition of 1e-10 (a double) is in
      single precision. Hash i (0-based) is md5("host:port-i"); it gives 4 points, bytes
      4j..4j+3 of the digest read little-endian for j = 0..3. Sorted ascending (ties in
      insertion order); lookup as for etsy (ketama_dispatch: first point >= value, wrapping).

A host is written as the operator gave it, without brackets (IPv6 `::1` gives "::1:8125"); an
instance label (`:INSTANCE`) and a weight (`=WEIGHT`) never appear in the point names.

`hash_vectors.py route MODE BACKENDS` instead answers for names read from standard input, one
per line: the backend index of each, one per line (the kernel tests use it for backends on
ports chosen at run time).

Rows (tab-separated; `#` starts a comment):
  md5     LENGTH  HEXDIGEST          message: bytes (i % 251) for i in 0..<LENGTH
  md5s    TEXT    HEXDIGEST          message: TEXT's UTF-8 bytes
  points  MODE    BACKENDS  COUNTS   points per backend, comma-separated, in backend order
  ring    MODE    BACKENDS  VALUE    OWNER   the sorted ring, one row per point
  route   MODE    BACKENDS  NAME     VALUE   OWNER   a name's key value (hex) and backend index
BACKENDS is the relay's own syntax, comma-separated: HOST:PORT[:INSTANCE][=WEIGHT].
"""

import bisect
import hashlib
import math
import os
import struct
import sys


def f32(x):
    """Rounds a double to the nearest IEEE single (what a C float operation stores)."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def parse_backend(spec):
    """(host, port, weight) from HOST:PORT[:INSTANCE][=WEIGHT] or [V6]:PORT[:INSTANCE][=WEIGHT]."""
    weight = 1
    if "=" in spec:
        spec, weight_text = spec.rsplit("=", 1)
        weight = int(weight_text)
    if spec.startswith("["):
        host, rest = spec[1:].split("]", 1)
        port = rest[1:].split(":")[0]
    else:
        parts = spec.split(":")
        host, port = parts[0], parts[1]
    return host, int(port), weight


def le32(digest, offset):
    return struct.unpack_from("<I", digest, offset)[0]


def etsy_ring(backends):
    servers = [parse_backend(b) for b in backends]
    total = sum(w for _, _, w in servers)
    ring, counts = [], []
    for index, (host, port, weight) in enumerate(servers):
        percentage = weight / total
        length = math.floor(percentage * 40 * len(servers))
        counts.append(length)
        for i in range(length):
            digest = hashlib.md5(f"{host}:{port}-{i}".encode()).digest()
            ring.append((le32(digest, 0), index))
    ring.sort(key=lambda point: point[0])  # Python's sort is stable, as V8's is
    return ring, counts


def ketama_ring(backends):
    servers = [parse_backend(b) for b in backends]
    total = sum(w for _, _, w in servers)
    live = len(servers)
    ring, counts = [], []
    for index, (host, port, weight) in enumerate(servers):
        pct = f32(f32(float(weight)) / f32(float(total)))
        scaled = f32(f32(f32(pct * 160.0) / 4.0) * f32(float(live)))
        per_server = int(math.floor(f32(scaled + 0.0000000001))) * 4
        counts.append(per_server)
        for i in range(per_server // 4):
            digest = hashlib.md5(f"{host}:{port}-{i}".encode()).digest()
            for j in range(4):
                ring.append((le32(digest, 4 * j), index))
    ring.sort(key=lambda point: point[0])
    return ring, counts


def key_value(name):
    return le32(hashlib.md5(name.encode()).digest(), 0)


def route(ring, value):
    values = [v for v, _ in ring]
    position = bisect.bisect_left(values, value)
    if position == len(ring):
        position = 0
    return ring[position][1]


RINGS = {"etsy": etsy_ring, "ketama": ketama_ring}

NAMES = [
    "foo", "bar", "foobar", "changed", "a", "statsrelay.statsProcessed", "",
    "api.requests.count", "name with spaces", "caf\u00e9.latency", "\u6307\u6a19.count",
    "x" * 55, "y" * 56, "z" * 63, "w" * 64, "v" * 65, "u" * 119, "t" * 120, "s" * 200,
] + [f"metric.{i}" for i in range(200)] + [f"servers.web-{i:03d}.cpu.user" for i in range(100)]

ROUTE_POOLS = {
    "etsy": [
        ["127.0.0.1:8125"],
        ["10.0.0.1:8125", "10.0.0.2:8125"],
        ["a:1", "b:2", "c:3"],
        [f"10.0.0.{i}:8125" for i in range(1, 8)],          # 7 servers: 39 points each
        [f"10.0.0.{i}:8125" for i in range(1, 9)],
        [f"statsd-{i}.example.com:8125" for i in range(14)],  # 14: 39 points each
        ["10.0.0.1:8125:a", "[::1]:8126", "statsd.local:9125:b"],
        ["10.0.0.1:8125=1", "10.0.0.2:8125=2", "10.0.0.3:8125=3"],
        ["10.0.0.1:8125=100", "10.0.0.2:8125=1"],
    ],
    "ketama": [
        ["127.0.0.1:8125"],
        ["10.0.0.1:8125", "10.0.0.2:8125"],
        ["a:1", "b:2", "c:3"],
        [f"10.0.0.{i}:8125" for i in range(1, 8)],
        [f"statsd-{i}.example.com:8125" for i in range(14)],
        ["10.0.0.1:8125:a", "[::1]:8126", "statsd.local:9125:b"],
        ["10.0.0.1:8125=1", "10.0.0.2:8125=2", "10.0.0.3:8125=3"],
        ["10.0.0.1:8125=100", "10.0.0.2:8125=1"],
        ["10.0.0.1:8125=3", "10.0.0.2:8125=7", "10.0.0.3:8125=11", "10.0.0.4:8125=13", "10.0.0.5:8125=1"],
    ],
}

POINT_POOLS = [[f"10.1.0.{i}:8125" for i in range(1, n + 1)] for n in range(1, 41)] + [
    [f"10.1.0.{i}:8125" for i in range(1, 101)],
    [f"10.1.0.{i}:8125=1" for i in range(1, 6)] + ["10.1.0.6:8125=2"],
    ["10.1.0.1:8125=1", "10.1.0.2:8125=2", "10.1.0.3:8125=3"],
    ["10.1.0.1:8125=100", "10.1.0.2:8125=1"],
    ["10.1.0.1:8125=3", "10.1.0.2:8125=7", "10.1.0.3:8125=11", "10.1.0.4:8125=13", "10.1.0.5:8125=1"],
    [f"10.1.0.{i}:8125={i}" for i in range(1, 21)],
]

RING_POOLS = {
    "etsy": [["10.0.0.1:8125", "10.0.0.2:8125", "10.0.0.3:8125"]],
    "ketama": [["10.0.0.1:8125", "10.0.0.2:8125=2"]],
}


def main():
    rows = ["# generated by hash_vectors.py from the algorithms' definitions with hashlib.md5; do not edit"]
    for length in list(range(0, 130)) + [200, 1000]:
        message = bytes(i % 251 for i in range(length))
        rows.append(f"md5\t{length}\t{hashlib.md5(message).hexdigest()}")
    for text in ["foo", "caf\u00e9", "10.0.0.1:8125-0", "10.0.0.1:8125-39"]:
        rows.append(f"md5s\t{text}\t{hashlib.md5(text.encode()).hexdigest()}")
    for mode, build in RINGS.items():
        for pool in POINT_POOLS:
            _, counts = build(pool)
            rows.append(f"points\t{mode}\t{','.join(pool)}\t{','.join(map(str, counts))}")
        for pool in RING_POOLS[mode]:
            ring, _ = build(pool)
            rows += [f"ring\t{mode}\t{','.join(pool)}\t{value:08x}\t{owner}" for value, owner in ring]
        for pool in ROUTE_POOLS[mode]:
            ring, _ = build(pool)
            for name in NAMES:
                value = key_value(name)
                rows.append(f"route\t{mode}\t{','.join(pool)}\t{name}\t{value:08x}\t{route(ring, value)}")
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hash-vectors.tsv")
    with open(path, "w", encoding="utf-8") as output:
        output.write("\n".join(rows) + "\n")


def answer(mode, backends, names):
    ring, _ = RINGS[mode](backends)
    return [route(ring, key_value(name)) for name in names]


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "route":
        names = sys.stdin.read().split("\n")
        if names and names[-1] == "":
            names.pop()
        print("\n".join(map(str, answer(sys.argv[2], sys.argv[3].split(","), names))))
    else:
        main()
