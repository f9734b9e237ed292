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

/// A datagram's receive completion parked until it is relayed (`Ring.takeCompletions`): the
/// CQE's fields as the kernel wrote them.
public struct ParkedReceive: BitwiseCopyable, Equatable {
    @usableFromInline var cqe: cl_completion

    /// The completion of a datagram of `result` bytes (`cqe.res`) in buffer `bufferID`, received
    /// by the receive armed on listener `listener`, which stays armed.
    @inlinable @inline(__always)
    public init(bufferID: UInt16, result: Int32, listener: UInt32) {
        cqe = cl_completion(
            user_data: UserData(.receive, index: listener).rawValue, res: result,
            flags: UInt32(bufferID) << cl_IORING_CQE_BUFFER_SHIFT | cl_IORING_CQE_F_BUFFER | cl_IORING_CQE_F_MORE)
    }

    /// The provided buffer the datagram fills.
    @inlinable @inline(__always)
    public var bufferID: UInt16 { UInt16(truncatingIfNeeded: cqe.flags >> cl_IORING_CQE_BUFFER_SHIFT) }

    /// `cqe.res`: the datagram's length (its full length: see `ProvidedBufferRing`).
    @inlinable @inline(__always)
    public var result: Int32 { cqe.res }

    /// The id of the listener whose receive it completes (`UserData.index`, 32 bits).
    @inlinable @inline(__always)
    public var listener: UInt32 { UInt32(truncatingIfNeeded: cqe.user_data) }

    public static func == (lhs: ParkedReceive, rhs: ParkedReceive) -> Bool {
        lhs.cqe.user_data == rhs.cqe.user_data && lhs.cqe.res == rhs.cqe.res && lhs.cqe.flags == rhs.cqe.flags
    }
}

/// The CQEs other than parked datagrams that one `Ring.takeCompletions` took, in order, for
/// the worker to handle one by one; fixed storage, reused by every call.
public struct CompletionRun: ~Copyable {
    @usableFromInline let storage: UnsafeMutablePointer<cl_completion>
    /// The most CQEs one call takes.
    public let capacity: Int

    /// Room for `capacity` CQEs.
    public init(capacity: Int) {
        precondition(capacity > 0 && capacity <= 1 << 16, "a completion run holds 1-65536 CQEs")
        self.capacity = capacity
        storage = .allocate(capacity: capacity)
        storage.initialize(repeating: cl_completion(), count: capacity)
    }

    deinit { storage.deallocate() }

    /// The `index`th CQE of the last call, copied out.
    ///
    /// - Precondition: `index` is below the count that call returned.
    @inlinable @inline(__always)
    public subscript(index: Int) -> Completion {
        assert(index >= 0 && index < capacity, "completion run index out of range")
        let cqe = storage[index]
        return Completion(userData: UserData(rawValue: cqe.user_data), result: cqe.res, flags: cqe.flags)
    }
}
