import CLiburing
import Glibc

/// A UDP socket: the one owner of its file descriptor, closed when the owner goes away.
///
/// The relay's listeners and backend sockets are these; so are the sockets of `statsrelay sink`
/// and of the tests, through the blocking `send` and `receive` helpers. A Unix datagram
/// listener is one too (`UDPSocket+UnixListener.swift`): a worker reads both alike.
public struct UDPSocket: ~Copyable {
    /// The file descriptor; valid for the owner's lifetime.
    package let descriptor: Int32

    /// Owns `descriptor` (see `UDPSocket+HandOver.swift` for descriptors that come from elsewhere).
    init(descriptor: Int32) { self.descriptor = descriptor }

    /// Opens an unbound socket of `address`'s family.
    private static func open(for address: SocketAddress) throws(SystemCallError) -> UDPSocket {
        let domain = address.family == .ipv6 ? AF_INET6 : AF_INET
        do throws(Errno) {
            return UDPSocket(descriptor: try systemCall {
                socket(domain, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            })
        } catch { throw SystemCallError("socket udp", address.description, error) }
    }

    // close(2) is not retried: see `systemCall`.
    deinit { _ = CLiburing.close(descriptor) }

    /// Opens a socket bound to `address`.
    ///
    /// Port 0 with `reusePort` first finds a port that no socket holds, by binding a socket
    /// without `SO_REUSEPORT` to port 0 and closing it, then binds there: for a UDP socket with
    /// `SO_REUSEPORT`, Linux's choice of a port ignores the ports other `SO_REUSEPORT` sockets of
    /// the same user hold (measured on 6.18: 900 such sockets bound to port 0 shared 9 to 20
    /// ports), so a relay given port 0 could join another relay's group and take part of its
    /// datagrams unseen. A socket that takes the port between the two binds is not seen, as for
    /// `probeExclusive`; one that holds it without `SO_REUSEPORT` makes the bind fail, and
    /// another port is tried (8 times at most).
    ///
    /// - Parameters:
    ///   - address: where to listen; port 0 picks a free port (see `localAddress`).
    ///   - reusePort: set `SO_REUSEPORT` so several workers can share the address.
    ///   - receiveBufferBytes: requested `SO_RCVBUF`; `SO_RCVBUFFORCE` is tried first so that a
    ///     privileged relay is not capped by `net.core.rmem_max`.
    /// - Throws: `SystemCallError` naming the failed call and the address.
    public static func bound(
        to address: SocketAddress, reusePort: Bool = false, receiveBufferBytes: Int? = nil
    ) throws(SystemCallError) -> UDPSocket {
        guard reusePort && address.port == 0 else {
            return try bindOnce(to: address, reusePort: reusePort, receiveBufferBytes: receiveBufferBytes)
        }
        var attempts = 1
        while true {
            let unshared = try bindOnce(to: address, reusePort: false, receiveBufferBytes: nil).localAddress
            do throws(SystemCallError) {
                return try bindOnce(to: unshared, reusePort: true, receiveBufferBytes: receiveBufferBytes)
            } catch where error.errno.rawValue == EADDRINUSE && attempts < 8 {
                attempts += 1
            }
        }
    }

    /// Opens a socket bound to `address` as given (port 0: the kernel's choice), with
    /// `SO_REUSEPORT` if `reusePort`: `bound(to:reusePort:receiveBufferBytes:)`'s one attempt.
    private static func bindOnce(
        to address: SocketAddress, reusePort: Bool, receiveBufferBytes: Int?
    ) throws(SystemCallError) -> UDPSocket {
        let socket = try open(for: address)
        if reusePort {
            do throws(Errno) { try socket.setOption(SOL_SOCKET, SO_REUSEPORT, 1) } catch {
                throw SystemCallError("setsockopt SO_REUSEPORT", address.description, error)
            }
        }
        if let bytes = receiveBufferBytes {
            let value = Int32(clamping: bytes)
            do throws(Errno) { try socket.setOption(SOL_SOCKET, SO_RCVBUFFORCE, value) } catch {
                do throws(Errno) { try socket.setOption(SOL_SOCKET, SO_RCVBUF, value) } catch {
                    throw SystemCallError("setsockopt SO_RCVBUF", address.description, error)
                }
            }
        }
        do throws(Errno) {
            _ = try address.withUnsafeSockaddr { pointer, length throws(Errno) in
                try systemCall { bind(socket.descriptor, pointer, length) }
            }
        } catch { throw SystemCallError("bind udp", address.description, error) }
        return socket
    }

    /// Makes the kernel spread this socket's `SO_REUSEPORT` group's datagrams at random over
    /// the group's first `groupSize` sockets, instead of hashing each one's source and
    /// destination (which keeps one client on one socket). One program serves the whole group:
    /// attaching it again from another member replaces it with the same.
    ///
    /// - Precondition: `groupSize` ≥ 1.
    /// - Throws: `SystemCallError` for `setsockopt SO_ATTACH_REUSEPORT_CBPF`.
    public func spreadReusePortGroup(over groupSize: Int) throws(SystemCallError) {
        precondition(groupSize >= 1)
        do throws(Errno) {
            _ = try systemCall { cl_attach_reuseport_random(descriptor, UInt32(groupSize)) }
        } catch { throw SystemCallError("setsockopt SO_ATTACH_REUSEPORT_CBPF", localAddress.description, error) }
    }

    /// Makes this socket the one of its `SO_REUSEPORT` group that takes the datagrams the
    /// kernel receives on `cpu` (`SO_INCOMING_CPU`), or, with `nil`, takes that preference off.
    ///
    /// Once any socket of a group has a CPU set (`KernelSupport.selectsReusePortByIncomingCPU`:
    /// Linux 6.2 on), the kernel takes, from the socket its hash points at onwards, the first
    /// whose CPU is the one doing the datagram's protocol processing (the sender's on loopback;
    /// for a NIC the receive interrupt's, or the one RPS picks), and the hashed one when none
    /// has that CPU. An older kernel takes the option without steering by it. A program attached to the group
    /// (`spreadReusePortGroup(over:)`) decides before the preference is looked at.
    ///
    /// - Throws: `SystemCallError` for `setsockopt SO_INCOMING_CPU`.
    public func preferIncomingCPU(_ cpu: Int?) throws(SystemCallError) {
        do throws(Errno) { try setOption(SOL_SOCKET, SO_INCOMING_CPU, Int32(cpu ?? -1)) } catch {
            throw SystemCallError("setsockopt SO_INCOMING_CPU", localAddress.description, error)
        }
    }

    /// The CPU whose datagrams this socket prefers (`preferIncomingCPU(_:)`), or `nil` when it
    /// has none set.
    public var incomingCPU: Int? {
        guard let cpu = try? option(SOL_SOCKET, SO_INCOMING_CPU), cpu >= 0 else { return nil }
        return Int(cpu)
    }

    /// Takes any steering program off this socket's `SO_REUSEPORT` group, so the kernel's hash
    /// of each datagram's source and destination picks the socket again. A group without a
    /// program, or a socket in no group, is left as it is.
    ///
    /// - Throws: `SystemCallError` for `setsockopt SO_DETACH_REUSEPORT_BPF`.
    public func hashReusePortGroup() throws(SystemCallError) {
        do throws(Errno) {
            _ = try systemCall { cl_detach_reuseport(descriptor) }
        } catch where error.rawValue == ENOENT || error.rawValue == EINVAL {
            return
        } catch { throw SystemCallError("setsockopt SO_DETACH_REUSEPORT_BPF", localAddress.description, error) }
    }

    /// The receive buffer asked for a connected (backend) socket, whose only traffic is its
    /// error queue: 4 MiB, which the kernel doubles (about 6 000 ICMP errors of full-size
    /// datagrams where it may be forced).
    public static let errorQueueBufferBytes = 4 << 20

    /// Opens a socket connected to `address`, so that sends need no destination, with its error
    /// queue enabled (`IP_RECVERR`/`IPV6_RECVERR`): each ICMP error about a datagram it sent
    /// (port unreachable: `ECONNREFUSED`) is queued for `takeErrors(limit:)`, one entry per
    /// datagram. Until the queue is drained the next send also fails with that error; see
    /// `SocketErrorReport` for what was measured.
    ///
    /// - Parameter sendBufferBytes: requested `SO_SNDBUF` (forced where permitted).
    public static func connected(
        to address: SocketAddress, sendBufferBytes: Int? = nil
    ) throws(SystemCallError) -> UDPSocket {
        let socket = try open(for: address)
        do throws(Errno) { try SocketErrorReport.enable(on: socket.descriptor, family: address.family) } catch {
            throw SystemCallError(address.family == .ipv6 ? "setsockopt IPV6_RECVERR" : "setsockopt IP_RECVERR", address.description, error)
        }
        if let bytes = sendBufferBytes {
            let value = Int32(clamping: bytes)
            // A smaller send buffer only means earlier EAGAIN; it is not worth failing over.
            do throws(Errno) { try socket.setOption(SOL_SOCKET, SO_SNDBUFFORCE, value) } catch {
                try? socket.setOption(SOL_SOCKET, SO_SNDBUF, value)
            }
        }
        // Nothing is received here but the error queue, which is charged to the receive buffer:
        // room for thousands of entries where the limit may be raised, else twice `rmem_max`
        // (~330 entries with Linux's default), so that a burst of refusals between two drains
        // is not cut short (an entry dropped leaves its refused packet counted as sent). Only
        // what is queued is charged; nothing is reserved.
        let errorQueue = Int32(Self.errorQueueBufferBytes)
        do throws(Errno) { try socket.setOption(SOL_SOCKET, SO_RCVBUFFORCE, errorQueue) } catch {
            try? socket.setOption(SOL_SOCKET, SO_RCVBUF, errorQueue)
        }
        do throws(Errno) {
            _ = try address.withUnsafeSockaddr { pointer, length throws(Errno) in
                try systemCall { connect(socket.descriptor, pointer, length) }
            }
        } catch { throw SystemCallError("connect udp", address.description, error) }
        return socket
    }

    /// Checks that no other socket holds `address`, by binding a socket without `SO_REUSEPORT`
    /// to it and closing it again.
    ///
    /// Sockets that share a port through `SO_REUSEPORT` split its datagrams between them, so a
    /// second relay, or any stray socket that set the option on the same port, would silently
    /// take part of the traffic. A bind without the option fails with `EADDRINUSE` if any socket
    /// holds the address (or covers it, such as one bound to `0.0.0.0` on the same port), with
    /// or without `SO_REUSEPORT`. Call it before the relay's own sockets bind; it proves nothing
    /// for port 0, and a socket that binds after the probe is not seen.
    /// - Throws: `SystemCallError` for `bind udp <address>`; for `EADDRINUSE` its hint says
    ///   another process (or a stray `SO_REUSEPORT` socket) holds the address and that
    ///   `--reuseport-group` shares it deliberately.
    public static func probeExclusive(_ address: SocketAddress) throws(SystemCallError) {
        let probe = try open(for: address)
        do throws(Errno) {
            _ = try address.withUnsafeSockaddr { pointer, length throws(Errno) in
                try systemCall { bind(probe.descriptor, pointer, length) }
            }
        } catch {
            let hint = error.rawValue == EADDRINUSE
                ? "another process (or a stray socket with SO_REUSEPORT) holds this address and would silently "
                    + "share its traffic; stop it, or pass --reuseport-group to share the port deliberately"
                : nil
            throw SystemCallError("bind udp", address.description, error, hint: hint)
        }
    }

    /// How many datagrams the kernel dropped at this socket since it was opened, mostly because
    /// the receive buffer was full (`SO_MEMINFO`'s `SK_MEMINFO_DROPS`, Linux 4.6+; the socket's
    /// `sk_drops`, the `drops` column of `/proc/net/udp`).
    ///
    /// The kernel keeps it in 32 bits, so it wraps: count the change between two reads as
    /// `UInt64(now &- before)`. It also counts datagrams refused by a socket filter or with a
    /// bad checksum, which never reach the relay either. Reading it costs one system call, so
    /// read it at counter publication, not per datagram. `nil` if the kernel lacks `SO_MEMINFO`.
    public var kernelDrops: UInt32? {
        var memory = [UInt32](repeating: 0, count: Int(cl_SK_MEMINFO_VARS))
        var length = socklen_t(memory.count * MemoryLayout<UInt32>.size)
        let read: Int32? = memory.withUnsafeMutableBytes { raw in
            try? systemCall { getsockopt(descriptor, SOL_SOCKET, cl_SO_MEMINFO, raw.baseAddress, &length) }
        }
        let index = Int(cl_SK_MEMINFO_DROPS)
        guard read != nil, Int(length) >= (index + 1) * MemoryLayout<UInt32>.size else { return nil }
        return memory[index]
    }

    /// Drains this socket's error queue (connected sockets have it enabled) and counts what it
    /// held; see `SocketErrorReport`.
    ///
    /// - Parameter limit: the most entries taken in one call.
    public func takeErrors(limit: Int = SocketErrorReport.defaultLimit) -> SocketErrorReport {
        SocketErrorReport.drain(descriptor, limit: limit)
    }

    func setOption(_ level: Int32, _ name: Int32, _ value: Int32) throws(Errno) {
        var value = value
        _ = try systemCall { setsockopt(descriptor, level, name, &value, socklen_t(MemoryLayout<Int32>.size)) }
    }

    func option(_ level: Int32, _ name: Int32) throws(Errno) -> Int32 {
        var value: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        _ = try systemCall { getsockopt(descriptor, level, name, &value, &length) }
        return value
    }

    /// The receive buffer the kernel granted, in the units of the request: half of `SO_RCVBUF`
    /// as read back, since the kernel doubles what it grants to cover its bookkeeping (a request
    /// of 8 MiB reads back as 16 MiB). An unprivileged request above `net.core.rmem_max` is
    /// granted `rmem_max`, so this is then less than what was asked for.
    public var receiveBufferBytes: Int { Int((try? option(SOL_SOCKET, SO_RCVBUF)) ?? 0) / 2 }

    /// The address the socket is bound to (with the port the kernel chose for port 0).
    public var localAddress: SocketAddress {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        // getsockname(2) on an open socket fails only with EBADF/EFAULT, which ownership rules out.
        _ = withUnsafeMutableBytes(of: &storage) { raw in
            try? systemCall { getsockname(descriptor, raw.baseAddress!.assumingMemoryBound(to: sockaddr.self), &length) }
        }
        return SocketAddress(storage: storage, length: length)
    }

    /// The address the socket is connected to (`getpeername(2)`), or `nil` when it is not
    /// connected (`ENOTCONN`; a listening TCP socket is not). A datagram socket connected to
    /// itself (a listener the relay stopped, `refuseNewDatagrams`) takes no other sender's
    /// datagrams.
    public var peerAddress: SocketAddress? {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let connected = withUnsafeMutableBytes(of: &storage) { raw in
            (try? systemCall { getpeername(descriptor, raw.baseAddress!.assumingMemoryBound(to: sockaddr.self), &length) }) != nil
        }
        return connected ? SocketAddress(storage: storage, length: length) : nil
    }

    /// Whether a datagram is waiting in the receive queue (`SIOCINQ` on a UDP socket gives the
    /// size of the next datagram; `MSG_PEEK` also catches a zero-length one).
    public var hasPendingDatagram: Bool {
        var byte: UInt8 = 0
        // EAGAIN (nothing queued) is the answer `false`, not a failure.
        let peeked = try? systemCall { recv(descriptor, &byte, 1, Int32(MSG_PEEK | MSG_DONTWAIT | MSG_TRUNC)) }
        return peeked != nil
    }

    /// Makes the socket take no further datagram while keeping the ones it holds: connects it
    /// to its own address, so the kernel delivers to it only what comes from there (nothing
    /// does) and gives other clients' datagrams to the port's other `SO_REUSEPORT` sockets, or
    /// answers them with port unreachable. `connect(2)` leaves the receive queue as it is, so
    /// what it held can then be counted to the end (`discardPending`) however fast clients send.
    public func refuseNewDatagrams() throws(Errno) {
        // A wildcard address as a destination is this host: the socket is bound to the
        // address it routes from, which no client's datagram comes from.
        _ = try localAddress.withUnsafeSockaddr { pointer, length throws(Errno) in
            try systemCall { connect(descriptor, pointer, length) }
        }
    }

    /// Takes every datagram still queued, without keeping any, and says how many there were:
    /// for a listener about to close at stop, so that what it held is counted, not lost unseen.
    ///
    /// Takes them in batches of up to 256 per `recvmmsg(2)` (`MSG_DONTWAIT | MSG_TRUNC`, no
    /// buffer: nothing is copied), empty datagrams included, and looks at the clock after each
    /// batch: however much a client sent, the work ends at `deadline` (plus one batch). What is
    /// still queued then stays in the socket.
    /// - Parameters:
    ///   - limit: the most to take.
    ///   - deadline: a `MonotonicClock` time after which no further batch is taken.
    public func discardPending(limit: Int = .max, deadline: UInt64 = .max) -> Int {
        var headers = [cl_mmsghdr](repeating: cl_mmsghdr(), count: 256)
        var discarded = 0
        while discarded < limit {
            let wanted = UInt32(min(headers.count, limit - discarded))
            let taken = headers.withUnsafeMutableBufferPointer { buffer in
                cl_recvmmsg(descriptor, buffer.baseAddress, wanted, Int32(MSG_DONTWAIT | MSG_TRUNC))
            }
            if taken == -EINTR { continue }
            // EAGAIN: the queue is empty; any other error ends the count as well.
            guard taken > 0 else { break }
            discarded += Int(taken)
            if MonotonicClock.nanoseconds() >= deadline { break }
        }
        return discarded
    }

    /// Sends one datagram, blocking until the kernel takes it.
    ///
    /// - Parameter destination: required unless the socket is connected.
    public func send(_ bytes: RawSpan, to destination: SocketAddress? = nil) throws(Errno) {
        let sent: Int = try bytes.withUnsafeBytes { raw throws(Errno) -> Int in
            if let destination {
                return try destination.withUnsafeSockaddr { address, length throws(Errno) in
                    try systemCall { sendto(descriptor, raw.baseAddress, raw.count, 0, address, length) }
                }
            }
            return try systemCall { CLiburing.send(descriptor, raw.baseAddress, raw.count, 0) }
        }
        if sent != bytes.byteCount { throw Errno.messageTooLong }
    }

    /// Sends one datagram made of `bytes`.
    public func send(_ bytes: [UInt8], to destination: SocketAddress? = nil) throws(Errno) {
        try send(bytes.span.bytes, to: destination)
    }

    /// Waits up to `timeoutMilliseconds` for one datagram and returns its bytes.
    ///
    /// - Parameter capacity: the largest datagram accepted whole; a larger one is cut (and
    ///   reported as truncated).
    /// - Returns: the datagram, or `nil` when the wait timed out.
    public func receive(
        capacity: Int = 65_536, timeoutMilliseconds: Int32
    ) throws(Errno) -> (bytes: [UInt8], truncated: Bool)? {
        var poller = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
        let ready = try systemCall { poll(&poller, 1, timeoutMilliseconds) }
        if ready == 0 { return nil }
        var buffer = [UInt8](repeating: 0, count: capacity)
        let length = try buffer.withUnsafeMutableBytes { raw in
            Result<Int, Errno> { () throws(Errno) -> Int in
                try systemCall { recv(descriptor, raw.baseAddress, raw.count, Int32(MSG_TRUNC | MSG_DONTWAIT)) }
            }
        }.get()
        let truncated = length > capacity
        buffer.removeLast(capacity - min(length, capacity))
        return (buffer, truncated)
    }
}
