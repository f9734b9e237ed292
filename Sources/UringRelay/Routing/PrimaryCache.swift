/// Remembers the jump-hash bucket of recently seen key hashes, per worker.
///
/// Computing the Go StatsRelay's bucket costs a chain of floating-point divisions per key
/// (about 80 cycles for three backends), while a metric name recurs many times a second; a
/// direct-mapped table indexed by the key's FNV-1a hash answers repeats in a few cycles.
/// Only the primary bucket is cached: it depends on the backend count alone, never on health.
public struct PrimaryCache: Sendable {
    private var hashes: [UInt64]
    /// The bucket plus one; 0 marks an empty entry.
    private var buckets: [UInt32]
    private let mask: Int
    /// The backend count the cached buckets were computed for.
    public let backendCount: Int

    /// A cache of `entries` (rounded up to a power of two) for `backendCount` backends.
    public init(entries: Int = 16_384, backendCount: Int) {
        var size = 1
        while size < entries { size <<= 1 }
        hashes = Array(repeating: 0, count: size)
        buckets = Array(repeating: 0, count: size)
        mask = size - 1
        self.backendCount = backendCount
    }

    /// The primary backend of a key hash: `JumpHash.bucket(for: hash, buckets: backendCount)`.
    @inline(__always)
    public mutating func primary(forHash hash: UInt64) -> Int {
        // FNV-1a's high bits mix best; fold them into the index.
        let index = Int(truncatingIfNeeded: hash ^ (hash >> 29)) & mask
        let cached = buckets[index]
        if cached != 0 && hashes[index] == hash { return Int(cached) - 1 }
        let bucket = JumpHash.bucket(for: hash, buckets: backendCount)
        hashes[index] = hash
        buckets[index] = UInt32(bucket + 1)
        return bucket
    }
}
