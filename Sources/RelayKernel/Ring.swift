import CLiburing
import Glibc

/// An io_uring instance: the one owner of its submission and completion queues.
///
/// A worker creates its ring on its own thread and is the only thread to touch it
/// (`IORING_SETUP_SINGLE_ISSUER`); completions are posted only while the worker enters the
/// kernel (`IORING_SETUP_DEFER_TASKRUN`), so no interrupt of the worker's own work runs them.
/// The liburing calls are `io_uring_queue_init_params(3)` and `io_uring_queue_exit(3)`.
public struct Ring: ~Copyable {
    /// The liburing handle, allocated for the ring's lifetime (it must not move).
    @usableFromInline let ring: UnsafeMutablePointer<io_uring>

    /// The setup flags the kernel accepted.
    public let setupFlags: UInt32
    /// The kernel's `IORING_FEAT_*` bits for this ring.
    public let features: UInt32

    /// Creates a ring, preferring `SINGLE_ISSUER | DEFER_TASKRUN` and falling back to
    /// `COOP_TASKRUN`, then to no task-run flags, on kernels that reject them.
    ///
    /// - Parameters:
    ///   - entries: submission queue size.
    ///   - completionEntries: completion queue size (`IORING_SETUP_CQSIZE`); large enough for
    ///     every buffer of the provided-buffer ring plus every send in flight.
    public init(entries: UInt32, completionEntries: UInt32) throws(Errno) {
        ring = .allocate(capacity: 1)
        ring.initialize(to: io_uring())
        let base = cl_IORING_SETUP_CQSIZE | cl_IORING_SETUP_SUBMIT_ALL
        let attempts = [
            base | cl_IORING_SETUP_SINGLE_ISSUER | cl_IORING_SETUP_DEFER_TASKRUN,
            base | cl_IORING_SETUP_COOP_TASKRUN,
            base,
        ]
        var lastError: Int32 = -EINVAL
        for flags in attempts {
            var params = io_uring_params()
            params.flags = flags
            params.cq_entries = completionEntries
            let result = io_uring_queue_init_params(entries, ring, &params)
            if result == 0 {
                setupFlags = flags
                features = params.features
                return
            }
            lastError = result
            if result != -EINVAL { break }
        }
        ring.deallocate()
        throw Errno(rawValue: -lastError)
    }

    /// Creates a ring with the queue sizes of `sizing` (see `init(entries:completionEntries:)`).
    public init(sizing: RingSizing) throws(Errno) {
        try self.init(entries: UInt32(RingSizing.submissionEntries), completionEntries: UInt32(clamping: sizing.completionEntries))
    }

    deinit {
        io_uring_queue_exit(ring)
        ring.deallocate()
    }

    /// Closes the ring (`io_uring_queue_exit(3)`), cancelling whatever is still armed.
    public consuming func close() {}

    /// Whether the kernel honours a minimum wait time in `io_uring_enter2`
    /// (`IORING_FEAT_MIN_TIMEOUT`, Linux 6.12).
    public var supportsMinimumWait: Bool { features & cl_IORING_FEAT_MIN_TIMEOUT != 0 }

    /// The setup flags by name, for the start-up log.
    public var setupFlagNames: [String] {
        var names: [String] = []
        if setupFlags & cl_IORING_SETUP_SINGLE_ISSUER != 0 { names.append("SINGLE_ISSUER") }
        if setupFlags & cl_IORING_SETUP_DEFER_TASKRUN != 0 { names.append("DEFER_TASKRUN") }
        if setupFlags & cl_IORING_SETUP_COOP_TASKRUN != 0 { names.append("COOP_TASKRUN") }
        if setupFlags & cl_IORING_SETUP_SUBMIT_ALL != 0 { names.append("SUBMIT_ALL") }
        if setupFlags & cl_IORING_SETUP_CQSIZE != 0 { names.append("CQSIZE") }
        return names
    }

    /// Lends the liburing handle to another `Kernel/` owner (the buffer ring registers with it).
    func withUnsafeRing<Result>(_ body: (UnsafeMutablePointer<io_uring>) throws(Errno) -> Result) throws(Errno) -> Result {
        try body(ring)
    }

    /// Lends the liburing handle for a call that cannot fail in Swift's terms.
    func withUnsafeRingValue<Result>(_ body: (UnsafeMutablePointer<io_uring>) -> Result) -> Result {
        body(ring)
    }

    /// SQEs that can be prepared before the queue is full.
    public var freeSubmissions: Int { Int(io_uring_sq_space_left(ring)) }

    /// Hands every prepared SQE to the kernel now (`io_uring_enter` without waiting), to make
    /// room in a full submission queue.
    ///
    /// - Throws: `Errno` when the kernel took none of them (`EAGAIN`/`ENOMEM` when it is short
    ///   of memory, `EBUSY` while completions overflow): the SQEs stay queued and are submitted
    ///   with the next wait.
    public func makeRoom() throws(Errno) {
        let result = cl_submit_and_wait_min(ring, 0, 0, 0)
        if result < 0 { throw Errno(rawValue: -result) }
    }

    /// Takes a free SQE, first submitting the queue if it is full.
    ///
    /// - Throws: `Errno` when the queue is full and the kernel took none of it (see
    ///   `makeRoom`); nothing was prepared, and the caller tries again next turn.
    private func nextSubmission() throws(Errno) -> UnsafeMutablePointer<io_uring_sqe> {
        if let sqe = io_uring_get_sqe(ring) { return sqe }
        try makeRoom()
        guard let sqe = io_uring_get_sqe(ring) else { throw Errno(rawValue: EAGAIN) }
        return sqe
    }

    /// Arms a multishot `recv` that takes buffers from a provided-buffer group.
    ///
    /// The liburing call is `io_uring_prep_recv_multishot(3)` with `IOSQE_BUFFER_SELECT` and
    /// `MSG_TRUNC` (Linux 6.0+). Each CQE is one datagram: `res` is its length (its full
    /// length, even when it did not fit its buffer: see `ProvidedBufferRing`), the buffer id is
    /// in the flags. No message header is asked for: nothing in the relay reads a datagram's
    /// source address or ancillary data, and `recv` costs less per datagram than `recvmsg`.
    ///
    /// The kernel ends the receive (a CQE without `IORING_CQE_F_MORE`) when it fails, when it
    /// is cancelled, when the group runs out of buffers (`-ENOBUFS`), and at every empty
    /// datagram: a `res` of 0 reads as the end of a stream, so that CQE carries no buffer
    /// (`bufferID == nil`) and stands for one empty datagram received.
    /// - Parameters:
    ///   - socket: the listening socket.
    ///   - buffers: the buffer ring that supplies the buffers.
    ///   - userData: returned in every CQE of this request.
    /// - Throws: `Errno` when no SQE could be had (see `nextSubmission`).
    public func armMultishotReceive(
        on socket: borrowing UDPSocket, buffers: borrowing ProvidedBufferRing, userData: UserData
    ) throws(Errno) {
        let sqe = try nextSubmission()
        io_uring_prep_recv_multishot(sqe, socket.descriptor, nil, 0, Int32(MSG_TRUNC))
        sqe.pointee.flags |= cl_IOSQE_BUFFER_SELECT
        sqe.pointee.buf_group = buffers.groupID
        io_uring_sqe_set_data64(sqe, userData.rawValue)
    }

    /// Whether the kernel takes receive bundles (`IORING_FEAT_RECVSEND_BUNDLE`, Linux 6.10): one
    /// multishot `recv` CQE covering several provided buffers.
    public var supportsReceiveBundles: Bool { features & cl_IORING_FEAT_RECVSEND_BUNDLE != 0 }

    /// Arms a multishot `recv` on a TCP ingest connection that takes buffers from
    /// `buffers`' group (`StreamBufferRing`).
    ///
    /// The liburing call is `io_uring_prep_recv_multishot(3)` with `IOSQE_BUFFER_SELECT`, and
    /// with `bundle` the ioprio flag `IORING_RECVSEND_BUNDLE` (Linux 6.10: ask
    /// `supportsReceiveBundles` first). Each CQE carries the bytes that waited on the socket:
    /// `res` bytes in the buffer its flags name (with a bundle, in that buffer and the ring's
    /// next ones: `StreamBufferRing.take`). The kernel ends the receive (a CQE without
    /// `IORING_CQE_F_MORE`) at the peer's close (`res` 0), on an error (`-ECONNRESET`, …),
    /// when the group has no buffer left (`-ENOBUFS`: the bytes stay in the socket), and when
    /// it is cancelled (`-ECANCELED`).
    /// - Throws: `Errno` when no SQE could be had (see `nextSubmission`).
    public func armMultishotStreamReceive(
        on socket: borrowing TCPIngestSocket, buffers: borrowing StreamBufferRing, bundle: Bool, userData: UserData
    ) throws(Errno) {
        let sqe = try nextSubmission()
        cl_prep_stream_recv_multishot(sqe, socket.descriptor, buffers.groupID, bundle ? 1 : 0)
        io_uring_sqe_set_data64(sqe, userData.rawValue)
    }

    /// Arms a multishot `accept` on a TCP ingest listening socket.
    ///
    /// The liburing call is `io_uring_prep_multishot_accept(3)` (Linux 5.19) with
    /// `SOCK_NONBLOCK | SOCK_CLOEXEC`. Each CQE is one connection: `res` is its new descriptor
    /// (take it with `TCPIngestSocket.accepted(by:)`) or `-errno`. The kernel ends the accept (a
    /// CQE without `IORING_CQE_F_MORE`) when an accept fails (`EMFILE`, `ENFILE`, …), when it is
    /// cancelled, and when the socket stops listening.
    /// - Throws: `Errno` when no SQE could be had (see `nextSubmission`).
    public func armMultishotAccept(on socket: borrowing TCPListenSocket, userData: UserData) throws(Errno) {
        let sqe = try nextSubmission()
        cl_prep_multishot_accept_nonblocking(sqe, socket.descriptor)
        io_uring_sqe_set_data64(sqe, userData.rawValue)
    }

    /// Queues a `send` of a packed send-buffer slot to its backend's connected socket.
    ///
    /// The liburing call is `io_uring_prep_send(3)`, without `MSG_DONTWAIT` so that a full
    /// socket buffer makes the kernel wait for room (it polls the socket and tries again)
    /// instead of failing with `EAGAIN`. Such a wait does not hold back a later send on the same
    /// socket: only a link (`linkedToNext`) does.
    /// - Parameter linkedToNext: link the next SQE prepared to this one (`IOSQE_IO_HARDLINK`):
    ///   the kernel starts it only once this send has completed, whatever its result. The next
    ///   SQE must be prepared before the queue is next submitted (see `freeSubmissions`): a link
    ///   does not reach across two submissions.
    /// - Precondition: the slot stays untouched until this send's CQE arrives.
    /// - Throws: `Errno` when no SQE could be had (see `nextSubmission`).
    public func send(
        slot: Int, of pool: borrowing SendBufferPool, to sockets: borrowing BackendSockets, userData: UserData,
        linkedToNext: Bool = false
    ) throws(Errno) {
        let sqe = try nextSubmission()
        let bytes = pool.unsafeBytes(ofSlot: slot)
        io_uring_prep_send(sqe, sockets.descriptors[pool.backend(of: slot)], bytes.baseAddress, bytes.count, 0)
        if linkedToNext { sqe.pointee.flags |= cl_IOSQE_IO_HARDLINK }
        io_uring_sqe_set_data64(sqe, userData.rawValue)
    }

    /// Arms a one-shot poll for readability of `descriptor` (the wake-up eventfd).
    ///
    /// The liburing call is `io_uring_prep_poll_add(3)`.
    /// - Throws: `Errno` when no SQE could be had (see `nextSubmission`).
    public func armPoll(descriptor: Int32, userData: UserData) throws(Errno) {
        let sqe = try nextSubmission()
        io_uring_prep_poll_add(sqe, descriptor, UInt32(POLLIN))
        io_uring_sqe_set_data64(sqe, userData.rawValue)
    }

    /// Queues a `send` of `bytes` on a TCP backend's connected socket.
    ///
    /// The liburing call is `io_uring_prep_send(3)` with `MSG_NOSIGNAL` (a reset connection
    /// fails the send with `EPIPE` instead of raising `SIGPIPE`). A stream socket may take
    /// fewer bytes than asked (a partial send): the caller resumes from where it stopped.
    /// - Precondition: `bytes` stays untouched until this send's CQE arrives.
    /// - Throws: `Errno` when no SQE could be had (see `nextSubmission`).
    public func sendStream(_ bytes: UnsafeRawBufferPointer, descriptor: Int32, userData: UserData) throws(Errno) {
        let sqe = try nextSubmission()
        io_uring_prep_send(sqe, descriptor, bytes.baseAddress, bytes.count, Int32(MSG_NOSIGNAL))
        io_uring_sqe_set_data64(sqe, userData.rawValue)
    }

    /// Arms a one-shot poll for writability of `descriptor` (a TCP backend's socket that is
    /// connecting, or whose send buffer is full); an error or hang-up ends it too.
    ///
    /// The liburing call is `io_uring_prep_poll_add(3)` with `POLLOUT`.
    /// - Throws: `Errno` when no SQE could be had (see `nextSubmission`).
    public func armWritablePoll(descriptor: Int32, userData: UserData) throws(Errno) {
        let sqe = try nextSubmission()
        io_uring_prep_poll_add(sqe, descriptor, UInt32(POLLOUT))
        io_uring_sqe_set_data64(sqe, userData.rawValue)
    }

    /// Asks the kernel to cancel the request carrying `target`.
    ///
    /// The liburing call is `io_uring_prep_cancel64(3)`.
    /// - Throws: `Errno` when no SQE could be had (see `nextSubmission`).
    public func cancel(_ target: UserData, userData: UserData) throws(Errno) {
        let sqe = try nextSubmission()
        io_uring_prep_cancel64(sqe, target.rawValue, 0)
        io_uring_sqe_set_data64(sqe, userData.rawValue)
    }

    /// Submits everything queued and waits, in one system call.
    ///
    /// - Parameters:
    ///   - completions: how many completions to wait for (0: only submit and collect).
    ///   - timeoutNanoseconds: the longest wait; `nil` waits without limit.
    ///   - minimumWaitMicroseconds: after this long, return as soon as one completion is
    ///     ready even if fewer than `completions` are; ignored where unsupported.
    /// - Returns: whether the wait ended normally; a timeout or signal is a normal end.
    /// - Throws: `Errno` for failures other than `ETIME`, `EINTR`, `EAGAIN` and `EBUSY`.
    public func submitAndWait(
        completions: UInt32, timeoutNanoseconds: UInt64?, minimumWaitMicroseconds: UInt32
    ) throws(Errno) {
        let timeout = timeoutNanoseconds.map { Int64(clamping: $0) } ?? -1
        let minimum = supportsMinimumWait ? minimumWaitMicroseconds : 0
        let result = cl_submit_and_wait_min(ring, completions, timeout, minimum)
        if result >= 0 { return }
        switch -result {
        case ETIME, EINTR:
            return  // the wait ended early; completions are read next either way
        case EAGAIN, EBUSY:
            return  // the CQ is full or the kernel is short of memory: reaping frees room
        default:
            throw Errno(rawValue: -result)
        }
    }

    /// The CQEs ready now, to be read in order with `takeCompletions` and handed back to the
    /// kernel together with `release(_:)`: one load of the kernel's tail and one store of the
    /// head per batch, where `nextCompletion()` pays both (and a call) per CQE.
    @inlinable @inline(__always)
    public func readyCompletions() -> CompletionBatch {
        let head = ring.pointee.cq.khead.pointee
        return CompletionBatch(first: head, end: head &+ io_uring_cq_ready(ring))
    }

    /// Takes CQEs of `batch` in order (`cl_take_completions`): each datagram of a receive
    /// that stays armed (kind `.receive`, `IORING_CQE_F_MORE`, a buffer, a result of 0 or
    /// more) is parked in `queue` at position `tail` (wrapped), which counts up, while `tail`
    /// is below `limit`; every other CQE goes to `others`. It stops after another CQE of kind
    /// `.receive` (an end, an error, an empty datagram, a datagram with no room left), so that
    /// one is handled before any later datagram is parked, and when `others` is full; call
    /// again until `batch.isRead`.
    ///
    /// - Returns: how many CQEs went to `others`.
    @inlinable @inline(__always)
    public func takeCompletions(
        in batch: inout CompletionBatch, parkingIn queue: borrowing MaskedTable<ParkedReceive>, tail: inout Int,
        limit: Int, others: borrowing CompletionRun
    ) -> Int {
        var next = batch.next
        var position = UInt(bitPattern: tail)
        // `ParkedReceive` is one `cl_completion`: the same memory, seen as the C type.
        let taken = queue.storage.withMemoryRebound(to: cl_completion.self, capacity: queue.count) { entries in
            cl_take_completions(
                ring, &next, batch.end, UInt32(UserData.Kind.receive.rawValue), entries, UInt(bitPattern: queue.mask),
                &position, UInt(bitPattern: limit), others.storage, UInt32(others.capacity))
        }
        batch.next = next
        tail = Int(bitPattern: position)
        return Int(taken)
    }

    /// Hands the slots of the CQEs read from `batch` back to the kernel
    /// (`io_uring_cq_advance(3)`: a store-release of the queue's head).
    @inlinable @inline(__always)
    public func release(_ batch: CompletionBatch) {
        io_uring_cq_advance(ring, batch.next &- batch.first)
    }

    /// Takes the oldest ready CQE out of the completion queue, or `nil` when none is ready.
    ///
    /// Loops over this end when the kernel has posted nothing more; this never enters the
    /// kernel (with `DEFER_TASKRUN`, nothing new is posted until the next `submitAndWait`).
    @inlinable @inline(__always)
    public func nextCompletion() -> Completion? {
        var cqe = io_uring_cqe()
        guard cl_next_cqe(ring, &cqe) == 1 else { return nil }
        return Completion(userData: UserData(rawValue: cqe.user_data), result: cqe.res, flags: cqe.flags)
    }
}

/// A run of CQEs that were ready in the completion queue at one look (`Ring.readyCompletions`),
/// read in order; positions count as the queue's head and tail do, wrapping at 2³².
public struct CompletionBatch {
    /// The queue's head when the batch was taken.
    @usableFromInline let first: UInt32
    /// The position of the next CQE to read.
    @usableFromInline var next: UInt32
    /// One past the last CQE that was ready.
    @usableFromInline let end: UInt32

    @usableFromInline
    init(first: UInt32, end: UInt32) {
        self.first = first
        next = first
        self.end = end
    }

    /// Whether no CQE was ready.
    @inlinable
    public var isEmpty: Bool { first == end }

    /// Whether every CQE of the batch was read.
    @inlinable
    public var isRead: Bool { next == end }
}
