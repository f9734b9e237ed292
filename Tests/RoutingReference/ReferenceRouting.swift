/// The relay's routing written again from its definition (docs/operations.md, "How relays stay
/// in agreement"), so the kernel tests' expectations never come from the code under test.
///
/// The same definitions, in Python, produced the fixed vectors in
/// `Tests/Vectors/rehash_vectors.py`; `ReferenceRoutingTests` holds this
/// version to some of them, and `HashTests` holds the relay's router to all of them. A target of
/// its own, so both test targets use this one copy.
public enum ReferenceRouting {
    /// FNV-1a 64 of `name`'s UTF-8 bytes, as Go's `hash/fnv` `New64a`.
    public static func fnv1a64(_ name: String) -> UInt64 { fnv1a64(name.utf8) }

    /// FNV-1a 64 of `bytes`.
    public static func fnv1a64(_ bytes: some Sequence<UInt8>) -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in bytes { hash = (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01b3 }
        return hash
    }

    /// Jump consistent hash as the Go StatsRelay writes it, the division in float64.
    public static func jump(_ key: UInt64, _ buckets: Int) -> Int {
        var key = key
        var bucket: Int64 = -1
        var next: Int64 = 0
        while next < Int64(buckets) {
            bucket = next
            key = key &* 2_862_933_555_777_941_757 &+ 1
            next = Int64(Double(bucket + 1) * (Double(Int64(1) << 31) / Double((key >> 33) + 1)))
        }
        return Int(bucket)
    }

    /// The rehash mixer: splitmix64's finaliser of `hash + attempt × 0x9e3779b97f4a7c15`.
    public static func mix(_ hash: UInt64, _ attempt: UInt64) -> UInt64 {
        var z = hash &+ attempt &* 0x9e37_79b9_7f4a_7c15
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }

    /// The backend `name` goes to while every backend is up (the Go StatsRelay's choice).
    public static func primary(_ name: String, backends: Int) -> Int { jump(fnv1a64(name), backends) }

    /// The backend `name` goes to under `rehash` with `down` down (not every one): its primary
    /// if up, else the first live candidate `jump(mix(hash, k), n)` for k = 1…64, else the live
    /// backends in order indexed by `jump(mix(hash, 0), live)`.
    public static func rehashed(_ name: String, backends: Int, down: Set<Int>) -> Int {
        let hash = fnv1a64(name)
        let primary = jump(hash, backends)
        guard down.contains(primary) else { return primary }
        for attempt in UInt64(1)...64 {
            let candidate = jump(mix(hash, attempt), backends)
            if !down.contains(candidate) { return candidate }
        }
        let live = (0..<backends).filter { !down.contains($0) }
        return live[jump(mix(hash, 0), live.count)]
    }
}
