import CLiburing
import Glibc

/// A non-blocking TCP client socket to a backend: the one owner of its descriptor, closed when
/// the owner goes away.
///
/// Never blocks the worker: `connect` returns at once (`EINPROGRESS`) and is finished by
/// `connectionState()`; writes are `MSG_DONTWAIT` (`StreamSendQueue.write`) or `send` SQEs.
/// `TCP_NODELAY` is set: the relay batches lines itself, so Nagle's delay would only add
/// latency to a batch's last segment.
public struct TCPBackendSocket: ~Copyable {
    /// The file descriptor; valid for the owner's lifetime.
    package let descriptor: Int32

    /// Where a connection stands, as `connectionState()` finds it.
    public enum ConnectionState: Equatable, Sendable {
        /// Still connecting.
        case connecting
        /// Connected: writes may go.
        case connected
        /// The connection failed (refused, unreachable, timed out, reset).
        case failed(Errno)
    }

    /// Whether `connect` succeeded at once (loopback may), so no wait for writability is needed.
    public private(set) var connectedAtOnce = false

    private init(descriptor: Int32) { self.descriptor = descriptor }

    // close(2) is not retried: see `systemCall`.
    deinit { _ = CLiburing.close(descriptor) }

    /// Opens a non-blocking socket and starts connecting it to `address`.
    ///
    /// - Parameter sendBufferBytes: `SO_SNDBUF` to ask for (`SO_SNDBUFFORCE` first), or `nil`
    ///   for the kernel's autotuning.
    /// - Returns: the socket (`connectedAtOnce` says whether it is connected already).
    /// - Throws: `Errno` of the step that failed: `socket`, or `connect` failing at once
    ///   (`ECONNREFUSED`, `ENETUNREACH`, no descriptors).
    public static func connecting(to address: SocketAddress, sendBufferBytes: Int?) throws(Errno) -> TCPBackendSocket {
        let domain = address.family == .ipv6 ? AF_INET6 : AF_INET
        var socket = TCPBackendSocket(descriptor: try systemCall {
            Glibc.socket(domain, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        })
        var one: Int32 = 1
        _ = setsockopt(socket.descriptor, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        if let sendBufferBytes {
            var value = Int32(clamping: sendBufferBytes)
            let size = socklen_t(MemoryLayout<Int32>.size)
            if setsockopt(socket.descriptor, SOL_SOCKET, SO_SNDBUFFORCE, &value, size) < 0 {
                _ = setsockopt(socket.descriptor, SOL_SOCKET, SO_SNDBUF, &value, size)
            }
        }
        let result = address.withUnsafeSockaddr { pointer, length in connect(socket.descriptor, pointer, length) }
        if result == 0 {
            socket.connectedAtOnce = true
            return socket
        }
        let code = errno
        guard code == EINPROGRESS || code == EINTR else { throw Errno(rawValue: code) }
        return socket
    }

    /// Whether a connection started by `connecting(to:sendBufferBytes:)` is still under way,
    /// made, or failed: a `poll(2)` for writability that does not wait, then `SO_ERROR`.
    /// Also tells a connected socket that was reset (`failed`).
    public func connectionState() -> ConnectionState {
        var entry = pollfd(fd: descriptor, events: Int16(POLLOUT), revents: 0)
        let ready = poll(&entry, 1, 0)
        if ready < 0 { return errno == EINTR ? .connecting : .failed(Errno(rawValue: errno)) }
        if ready == 0 { return .connecting }
        var code: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        if getsockopt(descriptor, SOL_SOCKET, SO_ERROR, &code, &length) < 0 { return .failed(Errno(rawValue: errno)) }
        if code != 0 { return .failed(Errno(rawValue: code)) }
        if entry.revents & Int16(POLLHUP) != 0 { return .failed(Errno(rawValue: ECONNRESET)) }
        return .connected
    }

    /// Bytes written to the socket that its peer has not acknowledged (`SIOCOUTQ`: for TCP,
    /// `write_seq − snd_una`). Still readable after a reset, which discards the data but not
    /// the sequence numbers: what was written and never acknowledged. `nil` if the kernel
    /// cannot say.
    public var unacknowledgedBytes: Int? {
        let bytes = cl_socket_send_queue_bytes(descriptor)
        return bytes < 0 ? nil : Int(bytes)
    }

    /// Whether the peer is still there, as non-blocking reads find it (`peerState`).
    public enum PeerState: Equatable, Sendable {
        /// Nothing (more) to read (`EAGAIN`): the connection stands.
        case open
        /// The peer closed its side (a FIN: `recv` returns 0). Bytes written after it are
        /// answered with a reset.
        case closed
        /// The connection failed (`ECONNRESET`, `ETIMEDOUT`, …: the socket's pending error).
        case failed(Errno)
    }

    /// The most bytes one `peerState` reads and throws away, in reads of `discardChunk`.
    public static let discardLimit = 8 * discardChunk
    static let discardChunk = 512

    /// Looks whether the peer closed or reset the connection, without waiting: a reset or a
    /// FIN otherwise shows only at the next write, and none may come. Reads with `recv(2)`
    /// (`MSG_DONTWAIT`) into a buffer on the stack and throws away what the peer sent: a
    /// StatsD backend sends nothing, and bytes one did send (a banner) would stay in front of
    /// its FIN forever, as the relay reads nothing else, and a look that only peeked would find
    /// them, never the FIN. At most `discardLimit` bytes a look: a peer still sending is
    /// `open`, and the next look goes on. A pending error a read reports is taken from the
    /// socket.
    ///
    /// - Parameter discarded: grows by the bytes read and thrown away.
    public func peerState(discarded: inout UInt64) -> PeerState {
        withUnsafeTemporaryAllocation(byteCount: Self.discardChunk, alignment: 16) { buffer in
            for _ in 0..<Self.discardLimit / Self.discardChunk {
                let result = recv(descriptor, buffer.baseAddress, buffer.count, Int32(MSG_DONTWAIT))
                if result > 0 {
                    discarded &+= UInt64(result)
                    continue
                }
                if result == 0 { return .closed }
                switch errno {
                case EAGAIN:
                    return .open
                case EINTR:
                    // Interrupted before it looked: nothing is known; the next look decides.
                    return .open
                case let code:
                    return .failed(Errno(rawValue: code))
                }
            }
            return .open
        }
    }

    /// `SO_SNDBUF` as the kernel applies it (twice what was asked for), or `nil`.
    public var sendBufferLimit: Int? {
        var value: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        return getsockopt(descriptor, SOL_SOCKET, SO_SNDBUF, &value, &length) < 0 ? nil : Int(value)
    }

    /// Shuts the writing side down (`shutdown(SHUT_WR)`): what the kernel accepted is still
    /// delivered, then a FIN; a `send` waiting in the kernel for room (an io_uring `send` SQE
    /// to a peer that stopped reading) fails at once with `EPIPE`, or returns what it had
    /// already taken, so its completion comes and the connection can be let go.
    public func shutDownWriting() { _ = shutdown(descriptor, Int32(SHUT_WR)) }

    /// The descriptor, for a poll set that waits for writability.
    public var pollDescriptor: Int32 { descriptor }
}
