import CLiburing
import Glibc

/// The sizes of one worker's kernel objects, derived in this one place: the send slots and
/// their reserve (the batch assembler), the submission and completion queues (the io_uring
/// driver and the start-up probe) and the memory Linux pins for them (the memlock advice).
///
/// ```
///   send slots      max(1024, 4 × reserve)   reserve = 3 × (maxLine / packet + 1) + 2 × backends + 2
///   SQ entries      1024
///   CQ entries      receive buffers + TCP receive buffers + send slots + 64, rounded up to a power of two
///   pinned bytes    pages(SQ × 64)                              the SQE array
///                 + pages(64 + CQ × 16 + SQ × 4)                ring header, CQEs, SQ index array
///                 + pages(receive buffers × 16)                 the provided-buffer ring
///                 + pages(TCP receive buffers × 16)             the TCP receive group's ring
/// ```
public struct RingSizing: Sendable, Equatable {
    /// Provided buffers in the worker's buffer ring (`--receive-buffers`).
    public let receiveBuffers: Int
    /// Provided buffers in the worker's TCP ingest receive group (0: none).
    public let streamReceiveBuffers: Int
    /// Free send slots needed before a datagram is taken on: enough for every packet one
    /// datagram can close, so packing it never runs out of slots midway.
    public let reserveSlots: Int
    /// Send-buffer slots: packets packed or in flight at once, the mirror pool's included.
    public let sendSlots: Int
    /// Of `sendSlots`, those only the mirror pool (`--mirror`) may take: 0 without a mirror.
    public let mirrorSlots: Int

    /// Submission queue entries. The queue is submitted whenever it fills, so this bounds the
    /// SQEs prepared between two `io_uring_enter` calls, not the requests in flight.
    public static let submissionEntries = 1024

    /// Completions beyond one per receive buffer and send slot: the wake-up and routing polls,
    /// cancellations, and the CQEs that end a multishot receive.
    public static let completionSpare = 64

    /// The sizes for one worker.
    ///
    /// - Parameters:
    ///   - receiveBuffers: provided receive buffers.
    ///   - packetBytes: the packet length limit (`--packet-len`).
    ///   - maxLineBytes: the longest line possible (the largest datagram accepted).
    ///   - backendCount: backends in the pool the send slots are made for.
    ///   - mirrorBackendCount: backends in the mirror pool (`--mirror`), which get send slots
    ///     of their own, as many as a pool of that size would, on top of the primary's.
    ///   - streamReceiveBuffers: buffers in the TCP ingest receive group (`StreamBufferRing`),
    ///     0 without one.
    public init(
        receiveBuffers: Int, packetBytes: Int, maxLineBytes: Int, backendCount: Int, mirrorBackendCount: Int = 0,
        streamReceiveBuffers: Int = 0
    ) {
        self.receiveBuffers = receiveBuffers
        self.streamReceiveBuffers = streamReceiveBuffers
        let primarySlots: Int
        (reserveSlots, primarySlots) = Self.sendSlots(packetBytes: packetBytes, maxLineBytes: maxLineBytes, backendCount: backendCount)
        mirrorSlots = Self.mirrorSlots(packetBytes: packetBytes, maxLineBytes: maxLineBytes, mirrorBackendCount: mirrorBackendCount)
        sendSlots = primarySlots + mirrorSlots
    }

    /// The send slots of a mirror pool of `mirrorBackendCount` backends: as many as a primary
    /// pool of that size gets, none without a mirror.
    public static func mirrorSlots(packetBytes: Int, maxLineBytes: Int, mirrorBackendCount: Int) -> Int {
        guard mirrorBackendCount > 0 else { return 0 }
        return sendSlots(packetBytes: packetBytes, maxLineBytes: maxLineBytes, backendCount: mirrorBackendCount).count
    }

    /// The send slots for a pool of `backendCount` backends and the reserve a datagram needs.
    ///
    /// A closed batch and the line that closed it together exceed `packetBytes`, so a datagram
    /// of D bytes closes at most 2D/P batches per backend plus one each, and each line longer
    /// than P takes one more slot. Four reserves, at least 1024 slots, keep a worker taking
    /// datagrams while earlier packets are still in flight.
    public static func sendSlots(packetBytes: Int, maxLineBytes: Int, backendCount: Int) -> (reserve: Int, count: Int) {
        let reserve = 3 * (maxLineBytes / max(packetBytes, 1) + 1) + 2 * backendCount + 2
        return (reserve, max(1024, 4 * reserve))
    }

    /// Completion queue entries asked for (`IORING_SETUP_CQSIZE`): one per receive buffer and
    /// per send slot, so every completion that can be outstanding at once has a place.
    public var completionEntries: Int { receiveBuffers + streamReceiveBuffers + sendSlots + Self.completionSpare }

    /// The most completion queue entries a ring can have (the kernel's `IORING_MAX_CQ_ENTRIES`,
    /// twice its 32 768 submission entries): `io_uring_setup` fails with `EINVAL` above it.
    public static let maximumCompletionEntries = 65_536

    /// Whether the completion queue this sizing asks for is larger than any ring can have:
    /// many send slots (a small `--packet-len` for long lines, a mirror) and receive buffers.
    public var exceedsCompletionLimit: Bool { completionEntries > Self.maximumCompletionEntries }

    /// The bytes Linux 6.x charges to `RLIMIT_MEMLOCK` for one worker's ring and buffer ring
    /// (a user without `CAP_IPC_LOCK`), computed as the kernel sizes them: queue sizes rounded
    /// up to powers of two, each region rounded up to whole pages.
    ///
    /// The regions: the SQE array (64 bytes per entry); the rings (a 64-byte header, 16 bytes
    /// per CQE, then the SQ index array of 4 bytes per entry); the provided-buffer ring, 16
    /// bytes per buffer (the buffers themselves are ordinary memory, not pinned).
    /// - Parameter pageBytes: the page size (this host's unless given).
    public func lockedBytes(pageBytes: Int = RingSizing.hostPageBytes) -> Int {
        func pages(_ bytes: Int) -> Int { (bytes + pageBytes - 1) / pageBytes * pageBytes }
        let submissions = Self.powerOfTwo(atLeast: Self.submissionEntries)
        let completions = Self.powerOfTwo(atLeast: completionEntries)
        let ringHeader = 64
        return pages(submissions * 64) + pages(ringHeader + completions * 16 + submissions * 4)
            + pages(receiveBuffers * 16) + (streamReceiveBuffers > 0 ? pages(streamReceiveBuffers * 16) : 0)
    }

    /// This host's page size.
    public static var hostPageBytes: Int { Int(sysconf(Int32(_SC_PAGESIZE))) }

    /// The smallest power of two that is at least `value` (the kernel's `roundup_pow_of_two`).
    static func powerOfTwo(atLeast value: Int) -> Int {
        var power = 1
        while power < value { power <<= 1 }
        return power
    }
}
