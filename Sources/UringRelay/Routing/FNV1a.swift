import RelayKernel

/// The 64-bit FNV-1a hash, as Go's `hash/fnv.New64a` computes it (the Go StatsRelay's key hash).
public enum FNV1a {
    /// The FNV-1a 64 offset basis.
    public static let offsetBasis: UInt64 = 0xcbf2_9ce4_8422_2325
    /// The FNV-1a 64 prime.
    public static let prime: UInt64 = 0x0000_0100_0000_01b3

    /// Hashes `bytes` (`RawSpan.fnv1a64`, the loop every routing key is hashed with).
    @inline(__always)
    public static func hash64(_ bytes: RawSpan) -> UInt64 {
        bytes.fnv1a64(continuing: offsetBasis)
    }

    /// Hashes the UTF-8 bytes of `text`.
    public static func hash64(_ text: String) -> UInt64 {
        var copy = text
        return copy.withUTF8 { hash64($0.span.bytes) }
    }
}
