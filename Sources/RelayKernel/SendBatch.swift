import BasicContainers
import CLiburing
import Glibc

/// Packets from a `SendBufferPool` sent with `sendmmsg(2)`, one call per backend socket: the
/// portable driver's counterpart of `send` SQEs.
///
/// The backend sockets are blocking, so a full socket buffer makes the call wait for room, as
/// the uring driver's sends do, rather than fail with `EAGAIN`; unless the send is made
/// `nonBlocking` (a worker that is stopping must not wait on a slow backend past its budget),
/// or its wait is bounded (`waitNanoseconds`: a worker that waits for room must still see a
/// stop, or any command, soon): then a packet that finds no room (in time), and every later
/// one for the same backend in the batch, has the result `-EAGAIN` and was not sent.
public struct SendBatch: ~Copyable {
    private let vectors: UnsafeMutablePointer<iovec>
    private let headers: UnsafeMutablePointer<cl_mmsghdr>
    // Fixed-capacity arrays: written for every packet, without an `Array`'s copy-on-write
    // uniqueness check on each write (three calls of `swift_isUniquelyReferenced` a packet).
    @usableFromInline var slots: RigidArray<Int32>
    @usableFromInline var backends: RigidArray<Int32>
    private var order: RigidArray<Int32>
    /// Per backend index, the scratch of `send`'s grouping (a count, then a position): sized
    /// for the backends known at the start, grown only when a packet for a higher backend
    /// index is first added (a reload that added backends), never shrunk.
    @usableFromInline var groupStarts: RigidArray<Int32>
    /// The highest backend index among the packets added, -1 with none.
    @usableFromInline var highestBackend = -1
    @usableFromInline var results: RigidArray<Int32>
    @usableFromInline var retried: RigidArray<Bool>
    /// Packets one batch holds.
    public let capacity: Int
    /// Packets added since the last `removeAll`.
    @inlinable @inline(__always)
    public var count: Int { added }
    @usableFromInline var added = 0

    /// Room for `capacity` packets, to `backends` backends (more can be added; see
    /// `groupStarts`).
    public init(capacity: Int, backends backendCount: Int = 1) {
        precondition(capacity > 0)
        self.capacity = capacity
        groupStarts = RigidArray(repeating: 0, count: max(backendCount, 1))
        vectors = .allocate(capacity: capacity)
        headers = .allocate(capacity: capacity)
        slots = RigidArray(repeating: 0, count: capacity)
        backends = RigidArray(repeating: 0, count: capacity)
        order = RigidArray(repeating: 0, count: capacity)
        results = RigidArray(repeating: 0, count: capacity)
        retried = RigidArray(repeating: false, count: capacity)
    }

    deinit {
        vectors.deallocate()
        headers.deallocate()
    }

    /// Whether the batch is full (send it before adding more).
    @inlinable @inline(__always)
    public var isFull: Bool { added == capacity }

    /// Adds a packed slot bound for `backend`.
    ///
    /// - Precondition: not full.
    @inlinable @inline(__always)
    public mutating func append(slot: Int, backend: Int) {
        precondition(count < capacity, "send batch is full")
        slots[count] = Int32(slot)
        backends[count] = Int32(backend)
        retried[count] = false
        added += 1
        if backend > highestBackend { raiseHighestBackend(to: backend) }
    }

    /// Records `backend` as the highest so far, growing `groupStarts` to cover it.
    @usableFromInline
    mutating func raiseHighestBackend(to backend: Int) {
        highestBackend = backend
        if backend >= groupStarts.count {
            var grown = RigidArray<Int32>(repeating: 0, count: backend + 1)
            for index in groupStarts.indices { grown[index] = groupStarts[index] }
            groupStarts = grown
        }
    }

    /// The slot of packet `index` (in the order added).
    @inlinable @inline(__always)
    public func slot(_ index: Int) -> Int { Int(slots[index]) }

    /// The result of packet `index` after `send`: bytes sent or `-errno`, as a CQE's `res`.
    @inlinable @inline(__always)
    public func result(_ index: Int) -> Int32 { results[index] }

    /// Whether packet `index` was sent twice: its first send failed with `ECONNREFUSED`, an
    /// earlier datagram's refusal still pending on the socket (see `send`).
    @inlinable @inline(__always)
    public func wasRetried(_ index: Int) -> Bool { retried[index] }

    /// Forgets every packet (after their results have been taken).
    @inlinable @inline(__always)
    public mutating func removeAll() {
        added = 0
        highestBackend = -1
    }

    /// Sends every added packet, grouped by backend (each backend's packets in the order they
    /// were added), and records each one's `result`.
    ///
    /// A packet whose send fails with `ECONNREFUSED` is sent once more before the packets after
    /// it: that error was an earlier datagram's ICMP refusal left pending on the socket (the
    /// kernel reports it to the next send and transmits nothing), not this packet's, and
    /// reporting it cleared it.
    ///
    /// - Parameters:
    ///   - nonBlocking: send with `MSG_DONTWAIT` (see the type's description).
    ///   - nonBlockingFrom: backends from this index on are always sent with `MSG_DONTWAIT`
    ///     (a mirror pool's sockets, which must never make the worker wait).
    ///   - waitNanoseconds: the longest the blocking sends of this call wait for room in full
    ///     socket buffers, all backends together; `.max` (the default) waits as long as it
    ///     takes. A bounded wait sends with `MSG_DONTWAIT` and waits for room with `poll(2)`
    ///     (`POLLOUT`) until its deadline: a blocking `sendmmsg` cannot be interrupted, and one
    ///     of 256 packets behind a 10 Mbit/s link blocks for some 300 ms.
    public mutating func send(
        from pool: borrowing SendBufferPool, to sockets: borrowing BackendSockets, nonBlocking: Bool = false,
        nonBlockingFrom: Int = .max, waitNanoseconds: UInt64 = .max
    ) {
        guard count > 0 else { return }
        let waitUntil = waitNanoseconds == .max ? UInt64.max : MonotonicClock.nanoseconds() &+ waitNanoseconds
        groupByBackend()
        var start = 0
        while start < count {
            let backend = Int(backends[Int(order[start])])
            var end = start
            while end < count && Int(backends[Int(order[end])]) == backend {
                let entry = Int(order[end])
                let bytes = pool.unsafeBytes(ofSlot: Int(slots[entry]))
                vectors[end] = iovec(iov_base: UnsafeMutableRawPointer(mutating: bytes.baseAddress), iov_len: bytes.count)
                var header = cl_mmsghdr()
                header.msg_hdr.msg_iov = vectors + end
                header.msg_hdr.msg_iovlen = 1
                headers[end] = header
                end += 1
            }
            sendGroup(start..<end, descriptor: sockets.descriptors[backend], waitUntil: nonBlocking || backend >= nonBlockingFrom ? 0 : waitUntil)
            start = end
        }
    }

    /// Fills `order` with the packets' indices grouped by backend, ascending, each backend's in
    /// the order they were added: a counting sort, linear in the packets and the backends (an
    /// insertion sort cost ~1 000 instructions a packet with 256 packets over 3 backends).
    private mutating func groupByBackend() {
        let groups = highestBackend + 1
        for backend in 0..<groups { groupStarts[backend] = 0 }
        for index in 0..<count { groupStarts[Int(backends[index])] &+= 1 }
        var position: Int32 = 0
        for backend in 0..<groups {
            let packets = groupStarts[backend]
            groupStarts[backend] = position
            position &+= packets
        }
        for index in 0..<count {
            let backend = Int(backends[index])
            order[Int(groupStarts[backend])] = Int32(index)
            groupStarts[backend] &+= 1
        }
    }

    /// One backend's packets: `sendmmsg` sends a prefix and reports an error only for the
    /// first packet it could not send, so the call is repeated past each failure.
    ///
    /// A call that sent some packets and then failed returns their count and drops the error
    /// of the packet it stopped at (`__sys_sendmmsg` returns an error only when nothing was
    /// sent). That packet either met a refusal left pending by an earlier datagram (the error
    /// is then cleared, nothing was transmitted) or failed on its own. A pending error set
    /// anew in that send says the second: a local firewall's reject fails the send with
    /// `EPERM` and queues an ICMP error about the packet at once. So the packet is counted as
    /// failed when the socket holds a pending error again (taken here, as the next send would),
    /// and sent once more otherwise.
    ///
    /// With `MSG_DONTWAIT`, a call that finds the socket buffer full fails with `EAGAIN`: that
    /// packet and the rest of the group are left unsent with `-EAGAIN`, in order, for the
    /// caller to send later, once `waitUntil` (a `MonotonicClock` time; 0: no wait, `.max`: a
    /// blocking send, without `MSG_DONTWAIT`) has passed; before it, the call waits for room
    /// and goes on. A short non-blocking call is not a refusal when the socket holds no error
    /// (`holdsNoError`: no refusal can have stopped it) or its charged bytes leave no room for
    /// two more such packets (`sendBufferFull`): the call is made again at once from the
    /// packet it stopped at, not counted as retried, and its first result says what it was.
    private mutating func sendGroup(_ range: Range<Int>, descriptor: Int32, waitUntil: UInt64) {
        let flags = waitUntil == .max ? 0 : Int32(MSG_DONTWAIT)
        var next = range.lowerBound
        while next < range.upperBound {
            let requested = range.upperBound - next
            let result = cl_sendmmsg(descriptor, headers + next, UInt32(requested), flags)
            if result > 0 {
                for index in next..<next + Int(result) {
                    results[Int(order[index])] = Int32(clamping: headers[index].msg_len)
                }
                next += Int(result)
                if Int(result) < requested {
                    let stopped = Int(order[next])
                    if retried[stopped] || Self.takePendingError(descriptor) != 0 {
                        results[stopped] = -EIO  // failed; the kernel did not say why
                        next += 1
                    } else if flags & Int32(MSG_DONTWAIT) != 0
                        && (Self.holdsNoError(descriptor) || Self.sendBufferFull(descriptor, packetBytes: vectors[next].iov_len))
                    {
                        // Not a refusal: a full buffer, or the packet's own error, which the
                        // short call dropped (a firewall's `drop` fails the send with `EPERM`
                        // and leaves nothing behind). A call from it at once tells them apart,
                        // not counted as retried: a full buffer fails it with `EAGAIN` (waited
                        // for or left for later, below), its own error becomes its result, and
                        // room come back since sends it. Taking every short call for a full
                        // buffer left such a packet and the rest for the next turn, a packet
                        // or two a turn while the error lasted.
                        continue
                    } else {
                        retried[stopped] = true
                    }
                }
            } else if result == -EINTR {
                continue
            } else if result == -EAGAIN {
                if Self.waitForRoom(descriptor, until: waitUntil) { continue }
                for index in next..<range.upperBound {
                    // Not a refusal retried: a full buffer (the retry after a short call met it too).
                    retried[Int(order[index])] = false
                    results[Int(order[index])] = -EAGAIN
                }
                return
            } else if result == -ECONNREFUSED && !retried[Int(order[next])] {
                retried[Int(order[next])] = true
            } else {
                results[Int(order[next])] = result == 0 ? -EIO : result
                next += 1
            }
        }
    }

    /// Whether a non-blocking call that stopped short was stopped by a full send buffer: what
    /// the socket has charged and not freed (`SIOCOUTQ`) leaves no room for two more packets of
    /// `packetBytes` with the kernel's overhead (a few hundred bytes to 2 KiB a datagram) under
    /// its limit (`SO_SNDBUF`). With that much room it was an earlier datagram's refusal. When
    /// the kernel cannot say, a full buffer (the packet goes again later either way).
    private static func sendBufferFull(_ descriptor: Int32, packetBytes: Int) -> Bool {
        let charged = cl_socket_send_queue_bytes(descriptor)
        var limit: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        guard charged >= 0, getsockopt(descriptor, SOL_SOCKET, SO_SNDBUF, &limit, &length) == 0 else { return true }
        return Int(charged) + 2 * (packetBytes + 2_048) > Int(limit)
    }

    /// Whether the socket holds no error at all: no pending error and an empty error queue
    /// (`poll` reports neither as `POLLERR`). A refusal that fails a send always leaves its
    /// entry in the error queue (the backend sockets have `IP_RECVERR`, and the kernel clears
    /// the pending error only with the queue's last ICMP entry), so a short non-blocking call
    /// with none was stopped by a full buffer, even when room has come back since (a worker
    /// descheduled between the call and the `SIOCOUTQ` check of `sendBufferFull`).
    private static func holdsNoError(_ descriptor: Int32) -> Bool {
        var entry = pollfd(fd: descriptor, events: 0, revents: 0)
        return poll(&entry, 1, 0) == 0
    }

    /// Waits until the socket has room to send (`POLLOUT`) or `deadline` comes, if it has not
    /// already.
    ///
    /// - Returns: whether to try the send again (`false` once `deadline` has passed).
    private static func waitForRoom(_ descriptor: Int32, until deadline: UInt64) -> Bool {
        let now = MonotonicClock.nanoseconds()
        guard now < deadline else { return false }
        var poller = pollfd(fd: descriptor, events: Int16(POLLOUT), revents: 0)
        // Rounded up, so the last wait reaches the deadline; EINTR is one more try.
        let milliseconds = deadline == .max ? -1 : Int32(clamping: (deadline - now + 999_999) / 1_000_000)
        _ = poll(&poller, 1, milliseconds)
        return true
    }

    /// Takes the socket's pending error (`SO_ERROR`, which clears it as a send would), or 0.
    private static func takePendingError(_ descriptor: Int32) -> Int32 {
        var error: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(descriptor, SOL_SOCKET, SO_ERROR, &error, &length) == 0 else { return 0 }
        return error
    }
}
