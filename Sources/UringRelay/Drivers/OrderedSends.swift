import BasicContainers
import Glibc
import RelayKernel

/// The io_uring driver's sends, kept in order per backend socket: nothing sent to a backend
/// overtakes what was handed out for it before (held and replayed packets included).
///
/// A `send` SQE that finds the socket's send buffer full does not fail: the kernel polls the
/// socket and tries again when there is room. Meanwhile a later send to the same socket, in the
/// same submission or a later one, can find room first and overtake it. Two ways out, chosen
/// per backend and turn, and never while a send of that backend is still in flight:
/// - *unlinked*: one packet alone (it has nothing to overtake), or several with room for them
///   all in the socket's send buffer, even charged at more than the kernel charges (`SIOCOUTQ`
///   against `SO_SNDBUF`, one `ioctl` per backend and turn). Only the worker sends on the socket,
///   so its room can only grow until the sends are issued: none waits, and the kernel issues
///   them in submission order, each done before the next. This is the steady state, at the cost
///   of that `ioctl`.
/// - *chain*: otherwise the packets go as one chain, linked in order (`IOSQE_IO_HARDLINK`: the
///   kernel starts each only when the one before has completed), all in one submission, and
///   the backend's next packets wait here until every send of the chain has completed. A link
///   costs a pass through the kernel's deferred task work per send, so it is kept for a socket
///   under pressure, whose link is the limit then anyway.
///
/// A hard link, not a plain one: a send that fails (a refusal still pending on the socket)
/// does not cancel the ones after it, so a dead backend costs no more turns than a live one.
/// A send the kernel cancels all the same (`ECANCELED`: a chain it could not start) keeps its
/// place and goes again before anything newer.
///
/// A refusal (an ICMP error to an earlier packet) left pending on the socket fails the next
/// send untransmitted, and the driver sends it again (`RelayCore.retriesSend`): alone, it
/// still goes before the backend's next packets, which wait for it; one of several would go
/// after the ones behind it, already issued. So before several packets are submitted to a
/// backend, the pending error is taken (`BackendSockets.takePendingError`, one `getsockopt`
/// per backend and turn): a backend that comes back after refusing gets its packets in order.
/// Only a refusal that arrives while those sends are being issued (the backend coming up in
/// those microseconds) can still put one send after the next.
///
/// ```
///   backend b:  head[b] → slot → slot → slot → tail[b]      (previous/next: per slot, −1 ends)
///                 └─ submitted[b] of them in flight ─┘ └ queued ┘
/// ```
/// Each packet is one send-buffer slot, so the queues are lists threaded through per-slot
/// arrays: nothing is allocated per send.
struct OrderedSends: ~Copyable {
    /// Where a slot is.
    private enum Place: UInt8 {
        /// In no queue (free, being filled, or completed).
        case absent
        /// Queued, not yet submitted.
        case queued
        /// Submitted; its CQE has not come.
        case submitted
    }

    private var previous: RigidArray<Int32>
    private var next: RigidArray<Int32>
    private var place: RigidArray<UInt8>
    private var backendOf: RigidArray<Int32>
    private var head: RigidArray<Int32>
    private var tail: RigidArray<Int32>
    /// Per backend: sends still in flight.
    private var submitted: RigidArray<Int32>
    /// Per backend: its socket's send-buffer limit as the kernel applies it (−1: not read yet).
    private var sendBufferLimit: RigidArray<Int32>
    /// Sends handed to the kernel whose completion has not come.
    private(set) var inFlight = 0
    /// Sends queued here, not yet submitted.
    private(set) var queued = 0

    /// Queues for `backends` backends over a send-buffer pool of `slots` slots.
    init(backends: Int, slots: Int) {
        previous = RigidArray(repeating: -1, count: slots)
        next = RigidArray(repeating: -1, count: slots)
        place = RigidArray(repeating: Place.absent.rawValue, count: slots)
        backendOf = RigidArray(repeating: -1, count: slots)
        head = RigidArray(repeating: -1, count: backends)
        tail = RigidArray(repeating: -1, count: backends)
        submitted = RigidArray(repeating: 0, count: backends)
        sendBufferLimit = RigidArray(repeating: -1, count: backends)
    }

    /// The most the kernel can charge a socket for a datagram of `bytes`: its buffer rounded up
    /// to a power of two, the `sk_buff` and its shared info (under 1 KiB on 64-bit kernels),
    /// with room to spare.
    @inline(__always)
    static func charge(ofPacket bytes: Int) -> Int { 2 * bytes + 2048 }

    /// Sends handed out and not completed: queued here or in flight.
    var count: Int { queued + inFlight }

    /// Whether no send is queued or in flight.
    var isEmpty: Bool { count == 0 }

    /// The slots queued here and never handed to the kernel (for a stop out of time: they are
    /// counted as never sent, not as in flight). Allocates; not for the send path.
    var queuedSlots: [Int] { place.indices.filter { place[$0] == Place.queued.rawValue } }

    /// Sizes the queues for the core's pool, after a membership change (which waits until no
    /// send is left, so nothing queued is lost).
    mutating func follow(backends: Int, slots: Int) {
        guard backends != head.count || slots != place.count else { return }
        precondition(isEmpty, "the backend pool changed with sends still queued")
        self = OrderedSends(backends: backends, slots: slots)
    }

    /// Queues `slot`'s packet for `backend`, after every packet queued for it before.
    @inline(__always)
    mutating func enqueue(slot: Int, backend: Int) {
        precondition(place[slot] == Place.absent.rawValue, "send slot queued twice")
        place[slot] = Place.queued.rawValue
        backendOf[slot] = Int32(backend)
        append(slot, to: backend)
        queued += 1
    }

    /// Submits, for every backend with no send in flight, the packets queued for it: unlinked
    /// when its socket has room for them all, else as one linked chain as far as the submission
    /// queue has room.
    ///
    /// - Throws: `Errno` when the submission queue is full and the kernel takes none of it
    ///   (`Ring.makeRoom`); what was not submitted stays queued for the next turn.
    mutating func submit(
        to ring: borrowing Ring, from pool: borrowing SendBufferPool, over connections: inout BackendConnections
    ) throws(Errno) {
        guard queued > 0 else { return }
        for backend in head.indices where submitted[backend] == 0 && head[backend] >= 0 {
            // A packet alone (the common case with one-line datagrams) has nothing to overtake.
            if head[backend] == tail[backend] {
                try submitUnlinked(backend, to: ring, from: pool, over: &connections)
                continue
            }
            // A refusal pending on the socket would fail one send of several untransmitted, and
            // the sends after it would go before it is sent again (unlinked, or hard-linked):
            // taken first, so every packet of these goes, in order (its count is in the error
            // queue, which the ledger reads).
            connections.sockets.takePendingError(backend)
            if hasRoom(for: backend, pool: pool, sockets: connections.sockets) {
                try submitUnlinked(backend, to: ring, from: pool, over: &connections)
            } else {
                try submitChain(backend, to: ring, from: pool, over: &connections)
            }
        }
    }

    /// Whether `backend`'s socket has room for every packet queued for it.
    private mutating func hasRoom(for backend: Int, pool: borrowing SendBufferPool, sockets: borrowing BackendSockets) -> Bool {
        if sendBufferLimit[backend] < 0 { sendBufferLimit[backend] = Int32(clamping: sockets.sendBufferLimit(backend) ?? 0) }
        guard let charged = sockets.sendQueueBytes(backend) else { return false }
        var needed = charged
        var slot = Int(head[backend])
        while slot >= 0 {
            needed += Self.charge(ofPacket: pool.length(of: slot))
            slot = Int(next[slot])
        }
        return needed < Int(sendBufferLimit[backend])
    }

    /// Submits every packet queued for `backend`, unlinked, in order; a full submission queue
    /// is submitted midway (the sends before complete as they are issued).
    private mutating func submitUnlinked(
        _ backend: Int, to ring: borrowing Ring, from pool: borrowing SendBufferPool, over connections: inout BackendConnections
    ) throws(Errno) {
        var slot = Int(head[backend])
        while slot >= 0 {
            try ring.send(slot: slot, of: pool, to: connections.sockets, userData: UserData(.send, index: UInt32(slot)))
            markSubmitted(slot, backend, on: &connections)
            slot = Int(next[slot])
        }
    }

    /// Submits the packets queued for `backend` as one linked chain, all in this submission
    /// (a link does not reach across two), so cut where the submission queue is full.
    private mutating func submitChain(
        _ backend: Int, to ring: borrowing Ring, from pool: borrowing SendBufferPool, over connections: inout BackendConnections
    ) throws(Errno) {
        var room = ring.freeSubmissions
        if room == 0 {
            try ring.makeRoom()
            room = ring.freeSubmissions
            if room == 0 { throw Errno(rawValue: EAGAIN) }
        }
        var slot = Int(head[backend])
        while slot >= 0 && room > 0 {
            let following = Int(next[slot])
            room -= 1
            // With room left, taking the SQE cannot fail, so a link never dangles.
            try ring.send(
                slot: slot, of: pool, to: connections.sockets, userData: UserData(.send, index: UInt32(slot)),
                linkedToNext: following >= 0 && room > 0)
            markSubmitted(slot, backend, on: &connections)
            slot = following
        }
    }

    /// Marks `slot` in flight, on the socket `connections` has for `backend` now: its outcome
    /// goes to that socket's ledger even if the backend moves before it completes.
    @inline(__always)
    private mutating func markSubmitted(_ slot: Int, _ backend: Int, on connections: inout BackendConnections) {
        connections.sending(slot: slot, backend: backend)
        place[slot] = Place.submitted.rawValue
        submitted[backend] += 1
        queued -= 1
        inFlight += 1
    }

    /// Takes the completion of `slot`'s send out of its chain.
    ///
    /// - Returns: `false` when the kernel cancelled the send (`ECANCELED`) without sending it:
    ///   it stays queued in its place and goes with the backend's next chain, and the slot
    ///   stays in use. `true` otherwise: the send is done, whatever its result.
    @inline(__always)
    mutating func completed(slot: Int, result: Int32) -> Bool {
        precondition(place[slot] == Place.submitted.rawValue, "completion for a send not in flight")
        let backend = Int(backendOf[slot])
        submitted[backend] -= 1
        inFlight -= 1
        if result == -ECANCELED {
            place[slot] = Place.queued.rawValue
            queued += 1
            return false
        }
        unlink(slot, from: backend)
        place[slot] = Place.absent.rawValue
        return true
    }

    @inline(__always)
    private mutating func append(_ slot: Int, to backend: Int) {
        let last = tail[backend]
        previous[slot] = last
        next[slot] = -1
        if last >= 0 { next[Int(last)] = Int32(slot) } else { head[backend] = Int32(slot) }
        tail[backend] = Int32(slot)
    }

    @inline(__always)
    private mutating func unlink(_ slot: Int, from backend: Int) {
        let before = previous[slot]
        let after = next[slot]
        if before >= 0 { next[Int(before)] = after } else { head[backend] = after }
        if after >= 0 { previous[Int(after)] = before } else { tail[backend] = before }
        previous[slot] = -1
        next[slot] = -1
    }
}
