import CLiburing
import Glibc

/// A listening TCP socket of a TCP ingest listener: the one owner of its descriptor, closed
/// when the owner goes away.
///
/// Non-blocking, with `SO_REUSEPORT`: every worker binds its own on the listener's address and
/// the kernel spreads new connections over them (by the hash of the connection's addresses), so
/// a worker accepts only its own share and no accept is ever shared between threads.
public struct TCPListenSocket: ~Copyable {
    /// The file descriptor; valid for the owner's lifetime.
    package let descriptor: Int32
    /// The address bound, with the port the kernel chose for port 0.
    public let localAddress: SocketAddress

    /// The backlog asked of `listen(2)` (the kernel caps it at `net.core.somaxconn`): a burst of
    /// clients connecting at once waits there until the worker's next turn accepts them.
    public static let backlog: Int32 = 4096

    private init(descriptor: Int32, localAddress: SocketAddress) {
        self.descriptor = descriptor
        self.localAddress = localAddress
    }

    // close(2) is not retried: see `systemCall`.
    deinit { _ = CLiburing.close(descriptor) }

    private static func open(for address: SocketAddress) throws(SystemCallError) -> Int32 {
        let domain = address.family == .ipv6 ? AF_INET6 : AF_INET
        do throws(Errno) {
            return try systemCall {
                socket(domain, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            }
        } catch { throw SystemCallError("socket tcp", address.description, error) }
    }

    /// Opens a non-blocking socket listening on `address` with `SO_REUSEPORT` (and
    /// `SO_REUSEADDR`, so a restart is not refused by the last run's connections in `TIME_WAIT`).
    ///
    /// - Throws: `SystemCallError` naming the failed call and the address (`bind tcp ADDR`).
    public static func listening(on address: SocketAddress) throws(SystemCallError) -> TCPListenSocket {
        let descriptor = try open(for: address)
        var one: Int32 = 1
        let size = socklen_t(MemoryLayout<Int32>.size)
        if setsockopt(descriptor, SOL_SOCKET, SO_REUSEADDR, &one, size) < 0
            || setsockopt(descriptor, SOL_SOCKET, SO_REUSEPORT, &one, size) < 0 {
            let error = Errno(rawValue: errno)
            _ = CLiburing.close(descriptor)
            throw SystemCallError("setsockopt SO_REUSEPORT", address.description, error)
        }
        do throws(Errno) {
            _ = try address.withUnsafeSockaddr { pointer, length throws(Errno) in
                try systemCall { bind(descriptor, pointer, length) }
            }
            _ = try systemCall { listen(descriptor, backlog) }
        } catch {
            _ = CLiburing.close(descriptor)
            throw SystemCallError("bind tcp", address.description, error)
        }
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        // getsockname(2) on an open socket fails only with EBADF/EFAULT, which ownership rules out.
        _ = withUnsafeMutableBytes(of: &storage) { raw in
            getsockname(descriptor, raw.baseAddress!.assumingMemoryBound(to: sockaddr.self), &length)
        }
        return TCPListenSocket(descriptor: descriptor, localAddress: SocketAddress(storage: storage, length: length))
    }

    /// Checks that no other socket holds TCP `address`, by binding a socket without
    /// `SO_REUSEPORT` to it and closing it again (as `UDPSocket.probeExclusive` does for UDP):
    /// another relay on the port would otherwise silently take a share of the connections.
    ///
    /// - Throws: `SystemCallError` for `bind tcp <address>`, with a hint for `EADDRINUSE`.
    public static func probeExclusive(_ address: SocketAddress) throws(SystemCallError) {
        let descriptor = try open(for: address)
        defer { _ = CLiburing.close(descriptor) }
        var one: Int32 = 1
        // SO_REUSEADDR alone does not share a listening port; it only lets the probe past the
        // last run's connections in TIME_WAIT.
        _ = setsockopt(descriptor, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        do throws(Errno) {
            _ = try address.withUnsafeSockaddr { pointer, length throws(Errno) in
                try systemCall { bind(descriptor, pointer, length) }
            }
        } catch {
            let hint = error.rawValue == EADDRINUSE
                ? "another process (or a stray socket with SO_REUSEPORT) holds this address and would silently "
                    + "share its connections; stop it, or pass --reuseport-group to share the port deliberately"
                : nil
            throw SystemCallError("bind tcp", address.description, error, hint: hint)
        }
    }

    /// What one `accept` found.
    public enum Accepted: ~Copyable {
        /// A new connection (non-blocking).
        case connection(TCPIngestSocket)
        /// None is waiting.
        case none
        /// The accept failed (`EMFILE`, `ENFILE`, `ENOBUFS`, a connection aborted before it
        /// was taken): data, not an end of the listener.
        case failed(Errno)
    }

    /// Takes one waiting connection without blocking (`accept4`, non-blocking, close-on-exec).
    public func accept() -> Accepted {
        while true {
            let result = cl_accept_nonblocking(descriptor)
            if result >= 0 { return .connection(TCPIngestSocket(descriptor: result)) }
            let code = -result
            if code == EINTR { continue }
            if code == EAGAIN || code == EWOULDBLOCK { return .none }
            return .failed(Errno(rawValue: code))
        }
    }

    /// Stops listening at once (`shutdown(SHUT_RD)`, as HAProxy pauses a listener): a new
    /// connection is refused and those waiting in the backlog are reset, while the descriptor
    /// stays open for a multishot accept still armed on it, whose end (its cancellation) comes
    /// later; the port is released when the owner closes it.
    public func stopListening() { _ = shutdown(descriptor, Int32(SHUT_RD)) }

    /// The descriptor, for an `EventPoll`.
    public var pollDescriptor: Int32 { descriptor }
}

/// Listening TCP sockets that cross a process boundary: copied for the next process (a
/// takeover), adopted from the previous one or from systemd, and checked before use.
///
/// Descriptors travel between processes in `SocketBox`es, the carrier `UnixStreamSocket`'s
/// frames and `SystemdListenSockets` use for any socket: a box holding a TCP listening socket
/// is only ever checked (`listenerMismatch(_:expected:)`) and re-owned here (`adopting`), never
/// read as a UDP socket.
extension TCPListenSocket {
    /// A second owner of the same listening socket (`fcntl(F_DUPFD_CLOEXEC)`): the socket, its
    /// backlog and its place in the port's `SO_REUSEPORT` group stay until every owner has closed.
    ///
    /// - Throws: `SystemCallError` for `fcntl F_DUPFD_CLOEXEC`, with this socket's address.
    public func duplicate() throws(SystemCallError) -> TCPListenSocket {
        let descriptor = self.descriptor
        do throws(Errno) {
            return TCPListenSocket(descriptor: try systemCall { fcntl(descriptor, F_DUPFD_CLOEXEC, 0) }, localAddress: localAddress)
        } catch { throw SystemCallError("fcntl F_DUPFD_CLOEXEC", "tcp \(localAddress)", error) }
    }

    /// A copy of this socket boxed for passing to another process (`UnixStreamSocket.sendFrame`)
    /// or keeping in a `ListenerRegistry`.
    ///
    /// - Throws: `SystemCallError` for `fcntl F_DUPFD_CLOEXEC`.
    public func passable() throws(SystemCallError) -> SocketBox {
        let descriptor = self.descriptor
        do throws(Errno) {
            return SocketBox(UDPSocket(descriptor: try systemCall { fcntl(descriptor, F_DUPFD_CLOEXEC, 0) }))
        } catch { throw SystemCallError("fcntl F_DUPFD_CLOEXEC", "tcp \(localAddress)", error) }
    }

    /// A listening socket of its own on the socket `box` carries (a duplicate: the box keeps its
    /// descriptor), received from another process, made non-blocking; check it first with
    /// `listenerMismatch`.
    ///
    /// systemd passes its sockets blocking (`NonBlocking=no` by default): an `accept` on one
    /// whose connection another worker took first would block that worker for good. The flag
    /// belongs to the socket's open file, so systemd's descriptor turns non-blocking too, which
    /// it does not mind (it only polls a socket it does not accept on).
    /// - Throws: `SystemCallError` for `fcntl F_DUPFD_CLOEXEC` or `fcntl F_SETFL O_NONBLOCK`.
    public static func adopting(_ box: SocketBox) throws(SystemCallError) -> TCPListenSocket {
        let descriptor = box.socket.descriptor
        let copy: Int32
        do throws(Errno) { copy = try systemCall { fcntl(descriptor, F_DUPFD_CLOEXEC, 0) } } catch {
            throw SystemCallError("fcntl F_DUPFD_CLOEXEC", "tcp listener", error)
        }
        let socket = TCPListenSocket(descriptor: copy, localAddress: boundAddress(of: copy) ?? box.socket.localAddress)
        do throws(Errno) {
            let flags = try systemCall { fcntl(copy, F_GETFL) }
            if flags & O_NONBLOCK == 0 { _ = try systemCall { fcntl(copy, F_SETFL, flags | O_NONBLOCK) } }
        } catch { throw SystemCallError("fcntl F_SETFL O_NONBLOCK", "tcp \(socket.localAddress)", error) }
        return socket
    }

    /// Whether `box` carries a stream socket (`SO_TYPE` `SOCK_STREAM`): a TCP listener's, to be
    /// checked with `listenerMismatch`, rather than a datagram socket.
    public static func isStream(_ box: SocketBox) -> Bool {
        (try? box.socket.option(SOL_SOCKET, SO_TYPE)) == Int32(SOCK_STREAM.rawValue)
    }

    /// The address `box`'s socket is bound to (`getsockname`), or `nil` when it is no bound IPv4
    /// or IPv6 socket.
    public static func boundAddress(of box: SocketBox) -> SocketAddress? { boundAddress(of: box.socket.descriptor) }

    private static func boundAddress(of descriptor: Int32) -> SocketAddress? {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let named = withUnsafeMutableBytes(of: &storage) { raw in
            try? systemCall { getsockname(descriptor, raw.baseAddress!.assumingMemoryBound(to: sockaddr.self), &length) }
        }
        guard named != nil, storage.ss_family == sa_family_t(AF_INET) || storage.ss_family == sa_family_t(AF_INET6) else { return nil }
        return SocketAddress(storage: storage, length: length)
    }

    /// Why the socket `box` carries cannot serve as a TCP ingest listener for `expected`, or
    /// `nil` when it can: a TCP socket (`SO_TYPE` `SOCK_STREAM`, `SO_PROTOCOL` TCP, IPv4 or
    /// IPv6) that is listening (`SO_ACCEPTCONN`), with `SO_REUSEPORT` unless
    /// `requiringReusePort` is false (one socket every worker accepts on), bound to `expected`
    /// (port 0 in `expected` accepts any port).
    public static func listenerMismatch(_ box: SocketBox, expected: SocketAddress?, requiringReusePort: Bool = true) -> String? {
        guard (try? box.socket.option(SOL_SOCKET, SO_TYPE)) == Int32(SOCK_STREAM.rawValue) else { return "not a stream socket (SO_TYPE)" }
        guard (try? box.socket.option(SOL_SOCKET, SO_PROTOCOL)) == Int32(IPPROTO_TCP) else { return "not a TCP socket (SO_PROTOCOL)" }
        guard let address = boundAddress(of: box.socket.descriptor) else { return "not an IPv4 or IPv6 socket (getsockname)" }
        guard address.port != 0 else { return "not bound (getsockname: port 0)" }
        guard (try? box.socket.option(SOL_SOCKET, SO_ACCEPTCONN)).map({ $0 != 0 }) == true else {
            return "not listening (SO_ACCEPTCONN: systemd's ListenStream= makes a listening socket)"
        }
        guard !requiringReusePort || box.socket.reusesPort else { return "SO_REUSEPORT is not set" }
        if let expected, expected != address, !(expected.port == 0 && expected.family == address.family) {
            return "bound to \(address), not \(expected)"
        }
        return nil
    }
}

/// One accepted TCP ingest connection: the one owner of its descriptor, closed when the owner
/// goes away. The relay only reads from it: it never writes to a client, so a client that
/// stops reading can never block a worker.
public struct TCPIngestSocket: ~Copyable {
    /// The file descriptor; valid for the owner's lifetime.
    package let descriptor: Int32

    init(descriptor: Int32) { self.descriptor = descriptor }

    /// Takes the connection a multishot accept's CQE carries (`Ring.armMultishotAccept`), or
    /// `nil` when the CQE is an error (`res < 0`).
    public static func accepted(by completion: Completion) -> TCPIngestSocket? {
        completion.result >= 0 ? TCPIngestSocket(descriptor: completion.result) : nil
    }

    // close(2) is not retried: see `systemCall`.
    deinit { _ = CLiburing.close(descriptor) }

    /// Closes the connection with a reset instead of a FIN: `SO_LINGER` {on, 0 s}, then
    /// `close(2)`. A client that only writes would take a FIN for "the relay is reading" until
    /// its next write after it; a reset makes its next read or write fail (`ECONNRESET`) at
    /// once. What the socket holds unread is discarded (count it first: `unreadByteCount`).
    public consuming func reset() {
        var option = linger(l_onoff: 1, l_linger: 0)
        _ = setsockopt(descriptor, SOL_SOCKET, SO_LINGER, &option, socklen_t(MemoryLayout<linger>.size))
        // The descriptor closes as `self` ends here (`deinit`).
    }

    /// What one read found.
    public enum ReadResult: Equatable, Sendable {
        /// `count` bytes (at least 1) were read into the buffer's start.
        case bytes(Int)
        /// Nothing is waiting.
        case wouldBlock
        /// The peer closed its side (no more bytes will come).
        case closed
        /// The read failed (`ECONNRESET`, …).
        case failed(Errno)
    }

    /// Reads without blocking at most `limit` bytes into `buffer`'s start (lent on with
    /// `buffer.withBytes(count:)`, the count this returns).
    public func read(into buffer: borrowing StreamReadBuffer, limit: Int) -> ReadResult {
        let count = min(limit, buffer.capacity)
        while true {
            let result = recv(descriptor, buffer.storage, count, Int32(MSG_DONTWAIT))
            if result > 0 { return .bytes(result) }
            if result == 0 { return count == 0 ? .wouldBlock : .closed }
            let code = errno
            if code == EINTR { continue }
            if code == EAGAIN || code == EWOULDBLOCK { return .wouldBlock }
            return .failed(Errno(rawValue: code))
        }
    }

    /// The descriptor, for an `EventPoll`.
    public var pollDescriptor: Int32 { descriptor }

    /// The bytes the kernel has received on this connection and nobody has read yet
    /// (`SIOCINQ`); 0 when it cannot say.
    public var unreadByteCount: Int { max(0, Int(cl_socket_receive_queue_bytes(descriptor))) }
}

/// One worker's read buffer for its TCP ingest connections, allocated once: each read goes
/// into it and is framed before the next (the worker's one thread does both, in turn).
public struct StreamReadBuffer: ~Copyable {
    fileprivate let storage: UnsafeMutableRawPointer
    /// Its size in bytes.
    public let capacity: Int
    /// A buffer of `capacity` bytes.
    public init(capacity: Int) {
        self.capacity = max(1, capacity)
        storage = .allocate(byteCount: self.capacity, alignment: 16)
    }

    deinit { storage.deallocate() }

    /// Lends the first `count` bytes, the last read's (`TCPIngestSocket.read` said how many).
    public func withBytes<Result>(count: Int, _ body: (RawSpan) -> Result) -> Result {
        precondition(count >= 0 && count <= capacity)
        // The storage is written only by a read, which the worker makes after the bytes lent
        // here have been framed (one thread: never during `body`).
        return body(UnsafeRawBufferPointer(start: storage, count: count).bytes)
    }
}
