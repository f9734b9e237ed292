/// The 64-bit `user_data` carried by every SQE and returned in its CQE.
///
/// ```
///  63        56 55                        32 31                          0
/// +------------+----------------------------+-----------------------------+
/// | kind (8)   | reserved, zero (24)        | index (32): send slot, etc. |
/// +------------+----------------------------+-----------------------------+
/// ```
/// liburing's `examples/proxy.h` packs its `user_data` the same way: the kind says which
/// handler owns the completion, the index says which of its resources it concerns.
public struct UserData: Equatable, Sendable, CustomStringConvertible {
    /// Which operation a completion belongs to.
    public enum Kind: UInt8, Sendable, CaseIterable {
        /// The multishot `recv` on the listening socket.
        case receive = 1
        /// A `send` of one packed batch; the index is its send-buffer slot.
        case send = 2
        /// The poll on the worker's wake-up eventfd.
        case wakeup = 3
        /// An `ASYNC_CANCEL` request; its own result only.
        case cancel = 4
        /// The poll on the eventfd that says a new routing snapshot was published.
        case routing = 5
        /// A `send` on a TCP backend's connection; the index is `StreamUserData`'s.
        case streamSend = 16
        /// A poll for writability of a TCP backend's socket (connecting, or its send buffer
        /// full); the index is `StreamUserData`'s.
        case streamPoll = 17
        /// The poll on a worker's TCP ingest epoll descriptor (its listening sockets and
        /// connections, `EventPoll`).
        case ingestPoll = 18
        /// The multishot accept on one of a worker's TCP ingest listening sockets (io_uring
        /// driver); the index is the listener's id.
        case accept = 19
        /// The multishot `recv` on one of a worker's TCP ingest connections (io_uring driver);
        /// the index is the connection's slot (`TCPIngest`), stable for its lifetime.
        case streamReceive = 20
    }

    /// The packed value as the kernel sees it.
    public let rawValue: UInt64

    /// Packs a kind and an index.
    @inlinable @inline(__always)
    public init(_ kind: Kind, index: UInt32 = 0) {
        rawValue = UInt64(kind.rawValue) << 56 | UInt64(index)
    }

    /// Wraps a value read from a CQE.
    @inlinable @inline(__always)
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    /// The kind, or `nil` for a value this program never submitted.
    @inlinable @inline(__always)
    public var kind: Kind? { Kind(rawValue: UInt8(truncatingIfNeeded: rawValue >> 56)) }

    /// Whether the kind is `kind`: one compare, where `kind` decodes first (a hot loop's test).
    @inlinable @inline(__always)
    public func isKind(_ kind: Kind) -> Bool { rawValue >> 56 == UInt64(kind.rawValue) }

    /// The low 32 bits.
    @inlinable @inline(__always)
    public var index: UInt32 { UInt32(truncatingIfNeeded: rawValue) }

    public var description: String { "\(kind.map { "\($0)" } ?? "unknown")#\(index)" }
}
