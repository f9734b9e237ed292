import CLiburing
import Glibc

/// A UDP socket: the one owner of its file descriptor, closed when the owner goes away.
///
/// The relay's listeners and backend sockets are these; so are the sockets of `statsrelay sink`
/// and of the tests, through the blocking `send` and `receive` helpers.
public struct UDPSocket: ~Copyable {
    /// The file descriptor; valid for the owner's lifetime.
    package let descriptor: Int32

    private init(descriptor: Int32) { self.descriptor = descriptor }

    /// Opens an unbound socket of `address`'s family.
    private static func open(for address: SocketAddress) throws(SystemCallError) -> UDPSocket {
        let domain = address.family == .ipv6 ? AF_INET6 : AF_INET
        do throws(Errno) {
            return UDPSocket(descriptor: try systemCall {
                socket(domain, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            })
        } catch { throw SystemCallError("socket udp", address.description, error) }
    }

    deinit { _ = CLiburing.close(descriptor) }

    /// Opens a socket bound to `address`.
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

    /// Opens a socket connected to `address`, so that sends need no destination and
    /// `ECONNREFUSED` (ICMP port unreachable) is reported on the next send.
    ///
    /// - Parameter sendBufferBytes: requested `SO_SNDBUF` (forced where permitted).
    public static func connected(
        to address: SocketAddress, sendBufferBytes: Int? = nil
    ) throws(SystemCallError) -> UDPSocket {
        let socket = try open(for: address)
        if let bytes = sendBufferBytes {
            let value = Int32(clamping: bytes)
            // A smaller send buffer only means earlier EAGAIN; it is not worth failing over.
            do throws(Errno) { try socket.setOption(SOL_SOCKET, SO_SNDBUFFORCE, value) } catch {
                try? socket.setOption(SOL_SOCKET, SO_SNDBUF, value)
            }
        }
        do throws(Errno) {
            _ = try address.withUnsafeSockaddr { pointer, length throws(Errno) in
                try systemCall { connect(socket.descriptor, pointer, length) }
            }
        } catch { throw SystemCallError("connect udp", address.description, error) }
        return socket
    }

    private func setOption(_ level: Int32, _ name: Int32, _ value: Int32) throws(Errno) {
        var value = value
        _ = try systemCall { setsockopt(descriptor, level, name, &value, socklen_t(MemoryLayout<Int32>.size)) }
    }

    private func option(_ level: Int32, _ name: Int32) -> Int32 {
        var value: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        _ = getsockopt(descriptor, level, name, &value, &length)
        return value
    }

    /// The receive buffer the kernel granted (`SO_RCVBUF` as read back; the kernel doubles
    /// the request to account for its bookkeeping).
    public var receiveBufferBytes: Int { Int(option(SOL_SOCKET, SO_RCVBUF)) }

    /// The address the socket is bound to (with the port the kernel chose for port 0).
    public var localAddress: SocketAddress {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        withUnsafeMutableBytes(of: &storage) { raw in
            _ = getsockname(descriptor, raw.baseAddress!.assumingMemoryBound(to: sockaddr.self), &length)
        }
        return SocketAddress(storage: storage, length: length)
    }

    /// Whether a datagram is waiting in the receive queue (`SIOCINQ` on a UDP socket gives the
    /// size of the next datagram; `MSG_PEEK` also catches a zero-length one).
    public var hasPendingDatagram: Bool {
        var byte: UInt8 = 0
        let peeked = recv(descriptor, &byte, 1, Int32(MSG_PEEK | MSG_DONTWAIT | MSG_TRUNC))
        return peeked >= 0
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
