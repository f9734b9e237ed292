import RelayKernel

/// Google's jump consistent hash (Lamping & Veach, 2014), computed as the Go StatsRelay
/// computes it: the division in `float64`, so that both pick the same bucket for every key.
public enum JumpHash {
    /// The linear congruential step of the key.
    private static let multiplier: UInt64 = 2_862_933_555_777_941_757
    /// `float64(int64(1) << 31)`.
    private static let scale = Double(Int64(1) << 31)

    /// The bucket in `0..<buckets` for `key`.
    ///
    /// Each step is `next = Int64(Double(bucket + 1) * (2³¹ / Double(key' >> 33 + 1)))` with
    /// `key' = key * multiplier + 1`. The keys and their divisions do not depend on the bucket
    /// reached, so the first two are computed up front, where the CPU overlaps them, and only
    /// the multiplications wait on the previous step. The operations and their order are the
    /// reference's, so every result is bit for bit the same.
    ///
    /// - Precondition: `buckets > 0`.
    @inline(__always)
    public static func bucket(for key: UInt64, buckets: Int) -> Int {
        precondition(buckets > 0, "jump hash needs at least one bucket")
        let count = Int64(buckets)
        var key = key &* multiplier &+ 1
        let firstRatio = scale / Double((key >> 33) + 1)
        key = key &* multiplier &+ 1
        let secondRatio = scale / Double((key >> 33) + 1)
        // The first step starts from bucket 0: Double(0 + 1) * ratio is the ratio exactly.
        var bucket = Int64(firstRatio)
        if bucket >= count { return 0 }
        var next = Int64(Double(bucket + 1) * secondRatio)
        while next < count {
            bucket = next
            key = key &* multiplier &+ 1
            next = Int64(Double(bucket + 1) * (scale / Double((key >> 33) + 1)))
        }
        return Int(bucket)
    }
}
