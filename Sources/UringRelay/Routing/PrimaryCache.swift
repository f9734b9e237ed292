import RelayKernel

/// Remembers the primary backend of recently seen key hashes, per worker.
///
/// Computing the primary costs a chain of floating-point divisions per key under `jump`, and an
/// md5 of the name and a binary search of the ring under `etsy` and `ketama`, while a metric
/// name recurs many times a second. This is a two-way set-associative table
/// of 8-byte entries, indexed by the key's FNV-1a hash: a set is 16 bytes, so a lookup is one
/// cache line, and a name shares its set with one other without either being evicted.
/// 65 536 entries (512 KB) by default: with 10 000 names in 16 384 sets, the ~12 % of names in
/// a set with two others or more thrashed it, and 4.9 % of a W2 drain's lookups missed (each a
/// computed route of ~340 instructions); in 32 768 sets 2.0 %, names seen for the first time
/// included (issue 16). Four ways in 256 KB missed fewer still, but the lookups that had to read
/// past the set's newest two mispredicted: slower in time.
///
/// An entry is the hash with its low set-index bits xored with the bucket plus one (at least
/// 1, at most the set mask). The set index is the low bits of `hash ^ hash >> 29`, so two
/// hashes that agree in their high bits (above the set index) and land in the same set are
/// equal: the entry identifies its hash exactly, with no second load. A lookup xors the entry
/// with the hash sought: the entry of that hash leaves its bucket plus one; the entry of
/// another hash of the set leaves a bit above the set index. An empty entry of set `s` is the
/// value `s`, itself a hash of set `s`: xored with a hash of that set it leaves 0 (the hash
/// `s`) or a bit above the set index, never `1...setMask` (the hash `s ^ j`, `j` in
/// `1...setMask`, is of set `s ^ j`).
///
/// Under `jump` the backend is a function of the FNV-1a 64 alone, so the cache is exact. On a
/// ring it is a function of the name's md5, which the cache does not keep: two names with the
/// same FNV-1a 64 (for distinct names, a 2⁻⁶⁴ chance per pair) in one set at once would share
/// the first one's backend.
///
/// The line loop for `--hash-key name` without a mirror indexes it by `nameHash` instead, a
/// seeded hash that reads a name sixteen bytes a step, computed by the line scan from the blocks
/// it reads anyway where it can (`RawSpan.lineStop(from:hashingNameWith:)`): a name found in the
/// cache then costs no FNV-1a 64 at all, which is computed only on a miss (to route it) — on
/// the common path, the largest share of a line's instructions (issue 16). Two names with the same `nameHash` in
/// one set would share a backend, under `jump` too: for distinct names, a 2⁻⁶⁴ chance per pair
/// as for the FNV-1a on a ring, and with the seeds drawn at random for each cache, not a pair
/// anyone outside can make up (FNV-1a collisions can be; under `jump` they route alike anyway).
/// A cache is indexed by one hash or the other for its life: a worker's processor never
/// changes its `--hash-key` or its mirror.
public struct PrimaryCache: ~Copyable, Sendable {
    /// The sets, each its two entries (fixed size, no copy-on-write checks; a set's index is
    /// masked by the table, so its read needs no bounds check).
    private var sets: MaskedTable<CacheSet>
    private let setMask: UInt64
    /// Whether the bucket numbers fit in an entry; if not, nothing is cached (every entry stays
    /// empty, so every lookup computes).
    private let enabled: Bool
    /// The backend count the cached buckets were computed for.
    public let backendCount: Int
    /// `nameHash`'s seeds, drawn for this cache.
    let nameSeeds: NameHashSeeds

    /// A cache of about `entries` entries (rounded up to a power of two, at least 64) for
    /// `backendCount` backends.
    public init(entries: Int = 65_536, backendCount: Int) {
        var sets = 32
        while sets * 2 < entries { sets <<= 1 }
        // The set index's bits lie below bit 29 (`setIndex`): a hash's bits 29 and up are above them.
        precondition(sets <= 1 << 28, "primary cache too large")
        self.sets = MaskedTable(repeating: CacheSet(first: 0, second: 0), minimumCount: sets)
        setMask = UInt64(sets - 1)
        // bucket + 1 <= backendCount must fit in the low set-index bits.
        enabled = UInt64(backendCount) <= setMask
        self.backendCount = backendCount
        nameSeeds = NameHashSeeds.random()
        // Set `s`'s empty entries are `s`: a value no other set's hash matches (`match`).
        for set in 0..<sets { self.sets[wrapping: set] = CacheSet(first: UInt64(set), second: UInt64(set)) }
    }

    /// The hash the line loop for `--hash-key name` probes by (`probe(_:)`) in place of the
    /// name's FNV-1a 64: `RawSpan.nameHash`, seeded for this cache.
    @inline(__always)
    func nameHash(_ name: RawSpan) -> UInt64 { name.nameHash(seeds: nameSeeds) }

    /// A set's two entries, the most recently filled first: 16 bytes, read as one.
    struct CacheSet: BitwiseCopyable {
        var first: UInt64
        var second: UInt64
    }

    /// One lookup's reads: the two entries of a hash's set as they were when read.
    ///
    /// Reading the set early and deciding later lets the caller overlap the memory access with
    /// other work (the next line's hash). The entries read are never wrong, only possibly out
    /// of date, so deciding on them is exact; at worst a bucket is computed that was cached.
    struct Probe: Sendable {
        /// The hash probed by: the key's FNV-1a 64, or its `nameHash` in the line loop that
        /// probes by that (`DatagramProcessor`).
        let hash: UInt64
        fileprivate let first: UInt64
        fileprivate let second: UInt64

        /// A probe of no key (a placeholder, never looked up).
        static var none: Probe { Probe(hash: 0, first: 0, second: 0) }
    }

    /// The set of `hash` (before the table's mask): FNV-1a's high bits mix best, so they are
    /// folded into the set index. The set is recomputed where it is needed, not kept in the
    /// probe: one word less to store a line.
    @inline(__always)
    private static func setIndex(_ hash: UInt64) -> Int { Int(truncatingIfNeeded: hash ^ (hash >> 29)) }

    /// Reads the set of `hash`. (A disabled cache's sets are all empty: its probes never match.)
    @inline(__always)
    func probe(_ hash: UInt64) -> Probe {
        let set = sets[wrapping: Self.setIndex(hash)]
        return Probe(hash: hash, first: set.first, second: set.second)
    }

    /// The primary backend of a probed key: `router.primary(key: key, hash: probe.hash)`.
    /// The probe must come from this cache, for `key`'s FNV-1a 64.
    @inline(__always)
    mutating func primary(for probe: Probe, key: RawSpan, router: borrowing Router) -> Int {
        primary(for: probe, key: key, hash: probe.hash, router: router)
    }

    /// `primary(for:key:router:)` of a probe that may be of the key's `nameHash`: `hash` is the
    /// key's FNV-1a 64, what the router places it by on a miss.
    @inline(__always)
    mutating func primary(for probe: Probe, key: RawSpan, hash: UInt64, router: borrowing Router) -> Int {
        if let bucket = cached(probe) { return bucket }
        let bucket = router.primary(key: key, hash: hash)
        insert(probe, bucket)
        return bucket
    }

    /// The cached primary backend of a probed key, if any (`primary(for:key:router:)` without
    /// computing it on a miss).
    @inline(__always)
    func cachedPrimary(for probe: Probe) -> Int? { cached(probe) }

    /// The cached backend of a probed hash, if any.
    @inline(__always)
    private func cached(_ probe: Probe) -> Int? {
        if let bucket = match(probe.first, probe.hash) { return bucket }
        if let bucket = match(probe.second, probe.hash) { return bucket }
        // The probe may predate an insert into this set (the line before, maybe the same
        // name): read the set again, now in L1, before computing.
        let set = sets[wrapping: Self.setIndex(probe.hash)]
        return match(set.first, probe.hash) ?? match(set.second, probe.hash)
    }

    /// Caches `bucket` for a probed hash, as the set's most recent entry.
    @inline(__always)
    private mutating func insert(_ probe: Probe, _ bucket: Int) {
        guard enabled else { return }
        let index = Self.setIndex(probe.hash)
        sets[wrapping: index] = CacheSet(first: probe.hash ^ UInt64(bucket + 1), second: sets[wrapping: index].first)
    }

    /// The bucket of `entry` if it is `hash`'s, read from its set: one xor and one compare, no
    /// mask. Xored with `hash`, the entry of `hash` leaves its bucket + 1, so one less is its
    /// bucket, below `setMask`; any other entry of the set leaves a bit above the set index set,
    /// or 0 (an empty entry, for the hash equal to the set's number), at least `setMask` after
    /// the `- 1` either way (the type's doc).
    @inline(__always)
    private func match(_ entry: UInt64, _ hash: UInt64) -> Int? {
        let bucket = (entry ^ hash) &- 1
        return bucket < setMask ? Int(truncatingIfNeeded: bucket) : nil
    }

    /// The primary backend of a key: `router.primary(key: key, hash: hash)`.
    ///
    /// - Parameter hash: `key`'s FNV-1a 64.
    @inline(__always)
    public mutating func primary(key: RawSpan, hash: UInt64, router: borrowing Router) -> Int {
        primary(for: probe(hash), key: key, router: router)
    }

    /// The primary backend of a key hash under `jump`: `JumpHash.bucket(for: hash, buckets:
    /// backendCount)`.
    @inline(__always)
    public mutating func primary(forHash hash: UInt64) -> Int {
        let probe = probe(hash)
        if let bucket = cached(probe) { return bucket }
        let bucket = JumpHash.bucket(for: hash, buckets: backendCount)
        insert(probe, bucket)
        return bucket
    }
}
