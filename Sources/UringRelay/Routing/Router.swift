/// Picks the one backend a metric goes to, identically in every worker and every relay that
/// has the same backend list.
///
/// The key is the line's name (the bytes before the first `:`; tags never take part); the
/// bucket is the jump hash of its FNV-1a 64, indexing the backends in command-line order.
public struct Router: Sendable {
    /// How many backends there are.
    public let backendCount: Int

    /// A router over `backendCount` backends.
    ///
    /// - Precondition: `backendCount > 0`.
    public init(backendCount: Int) {
        precondition(backendCount > 0, "a router needs at least one backend")
        self.backendCount = backendCount
    }

    /// The backend index for a metric name.
    @inline(__always)
    public func backend(forKey key: RawSpan) -> Int {
        JumpHash.bucket(for: FNV1a.hash64(key), buckets: backendCount)
    }

    /// The backend index for a metric name given as text (for `statsrelay hash`).
    public func backend(forName name: String) -> Int {
        JumpHash.bucket(for: FNV1a.hash64(name), buckets: backendCount)
    }
}
