import CLiburing
import Glibc

/// One CQE, copied out of the completion queue so the queue slot can be released at once.
public struct Completion: Sendable {
    /// Which submission this completes.
    public var userData: UserData
    /// `cqe.res`: a byte count or other non-negative result, or `-errno`.
    public var result: Int32
    /// `cqe.flags` (`IORING_CQE_F_*`).
    public var flags: UInt32

    /// A copy of one CQE's fields.
    @usableFromInline
    init(userData: UserData, result: Int32, flags: UInt32) {
        self.userData = userData
        self.result = result
        self.flags = flags
    }

    /// Whether the multishot request that produced this stays armed (`IORING_CQE_F_MORE`).
    @inlinable @inline(__always)
    public var hasMore: Bool { flags & cl_IORING_CQE_F_MORE != 0 }

    /// The provided buffer this completion filled (`IORING_CQE_F_BUFFER`), if any.
    @inlinable @inline(__always)
    public var bufferID: UInt16? {
        flags & cl_IORING_CQE_F_BUFFER != 0 ? UInt16(truncatingIfNeeded: flags >> cl_IORING_CQE_BUFFER_SHIFT) : nil
    }
}
