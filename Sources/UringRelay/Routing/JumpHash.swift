/// Google's jump consistent hash (Lamping & Veach, 2014), computed as the Go StatsRelay
/// computes it: the division in `float64`, so that both pick the same bucket for every key.
public enum JumpHash {
    /// The bucket in `0..<buckets` for `key`.
    ///
    /// - Precondition: `buckets > 0`.
    @inline(__always)
    public static func bucket(for key: UInt64, buckets: Int) -> Int {
        precondition(buckets > 0, "jump hash needs at least one bucket")
        var key = key
        var bucket: Int64 = -1
        var next: Int64 = 0
        let count = Int64(buckets)
        while next < count {
            bucket = next
            key = key &* 2_862_933_555_777_941_757 &+ 1
            next = Int64(Double(bucket + 1) * (Double(Int64(1) << 31) / Double((key >> 33) + 1)))
        }
        return Int(bucket)
    }
}
