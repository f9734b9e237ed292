#!/usr/bin/env python3
"""Routing vectors for HashTests, computed from the definitions, not from the relay's code.

    python3 Tests/Vectors/rehash_vectors.py

prints the Swift argument tables (mix: hash, attempt, result; rehash: name, backends, down,
primary, target) pasted into Tests/UringRelayTests/HashTests.swift
(`mixVectors`, `rehashVectors`). Definitions: docs/operations.md, "How relays stay in agreement"
(which names the mixer only as "a fixed 64-bit mixer"; its definition is the router's documented
one, `Router.mix`, written out here):

- FNV-1a 64 of the metric name's bytes (offset basis 0xcbf29ce484222325, prime 0x100000001b3),
  as Go's hash/fnv New64a.
- Jump consistent hash (Lamping & Veach) as the Go StatsRelay computes it, the division in
  float64: b = -1, j = 0; while j < n: b = j; key = key * 2862933555777941757 + 1 (mod 2^64);
  j = int64(float64(b + 1) * (float64(1 << 31) / float64((key >> 33) + 1))).
- The rehash mixer: splitmix64's finaliser of hash + attempt * 0x9e3779b97f4a7c15 (mod 2^64):
  z ^= z >> 30; z *= 0xbf58476d1ce4e5b9; z ^= z >> 27; z *= 0x94d049bb133111eb; z ^= z >> 31.
- Under rehash, a key whose primary jump(hash, n) is down takes the first live candidate of
  jump(mix(hash, 1), n), jump(mix(hash, 2), n), ... up to attempt 64; if none is live, the live
  backends in order, indexed by jump(mix(hash, 0), number of live backends).
"""

MASK = (1 << 64) - 1


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) & MASK
    return h


def jump(key: int, buckets: int) -> int:
    b, j = -1, 0
    while j < buckets:
        b = j
        key = (key * 2862933555777941757 + 1) & MASK
        j = int(float(b + 1) * (float(1 << 31) / float((key >> 33) + 1)))
    return b


def mix(h: int, attempt: int) -> int:
    z = (h + attempt * 0x9E3779B97F4A7C15) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def route(name: str, backends: int, down: set) -> int:
    h = fnv1a64(name.encode())
    primary = jump(h, backends)
    if primary not in down:
        return primary
    for attempt in range(1, 65):
        candidate = jump(mix(h, attempt), backends)
        if candidate not in down:
            return candidate
    live = [b for b in range(backends) if b not in down]
    return live[jump(mix(h, 0), len(live))]


NAMES = ["foo", "bar", "foobar", "changed", "a", "statsrelay.statsProcessed",
         "api.requests.host-7.status_200", "db.query.latency.3", "queue.depth.q12", "users.unique"] + [
            f"svc.{i}.metric" for i in range(12)]
# (backends, down): one down, several down, half down.
CASES = [(3, [1]), (3, [0]), (5, [0]), (5, [0, 3]), (8, [3, 5, 6]), (8, [0, 1, 2, 3])]

print("    static let mixVectors: [(UInt64, UInt64, UInt64)] = [")
for h, attempt in [(0, 0), (0, 1), (fnv1a64(b"foo"), 1), (fnv1a64(b"foo"), 2), (MASK, 64), (0x0123456789ABCDEF, 7)]:
    print(f"        (0x{h:016x}, {attempt}, 0x{mix(h, attempt):016x}),")
print("    ]")
print("    static let rehashVectors: [(String, Int, [Int], Int, Int)] = [")
for backends, down in CASES:
    for name in NAMES:
        h = fnv1a64(name.encode())
        if jump(h, backends) in down:
            print(f'        ("{name}", {backends}, {down}, {jump(h, backends)}, {route(name, backends, set(down))}),')
print("    ]")
