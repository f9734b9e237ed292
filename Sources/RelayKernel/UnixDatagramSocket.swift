import CLiburing
import Glibc

/// A Unix datagram socket (`AF_UNIX`, `SOCK_DGRAM`, close-on-exec): what `sd_notify(3)` sends
/// its state lines through to `$NOTIFY_SOCKET`, and what a test binds to stand in for systemd.
///
/// A path beginning with `@` is in the abstract namespace (systemd's notation: the `@` stands for
/// the leading NUL byte), any other is a file system path. The owner closes its descriptor.
public struct UnixDatagramSocket: ~Copyable, Sendable {
    /// The socket's descriptor.
    public let descriptor: Int32

    private init(descriptor: Int32) { self.descriptor = descriptor }

    // close(2) is not retried: see `systemCall`.
    deinit { _ = close(descriptor) }

    /// A socket bound to nothing, for sending.
    public static func unbound() throws(Errno) -> UnixDatagramSocket {
        UnixDatagramSocket(descriptor: try systemCall { socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) })
    }

    /// A socket bound to `path`, for receiving.
    ///
    /// - Throws: `SystemCallError` naming the call and the path.
    public static func bound(to path: String) throws(SystemCallError) -> UnixDatagramSocket {
        let socket: UnixDatagramSocket
        do throws(Errno) { socket = try unbound() } catch { throw SystemCallError("socket unix", path, error) }
        do throws(Errno) {
            var (address, length) = try makeAddress(path)
            let descriptor = socket.descriptor
            _ = try systemCall {
                withUnsafePointer(to: &address) { pointer in
                    pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.bind(descriptor, $0, length) }
                }
            }
        } catch {
            throw SystemCallError("bind unix", path, error)
        }
        return socket
    }

    /// Sends `bytes` as one datagram to the socket at `path`, without waiting for room.
    ///
    /// - Throws: `Errno` (`ENOENT` or `ECONNREFUSED`: nobody listens there; `EAGAIN`: its queue is
    ///   full; `ENAMETOOLONG`: the path does not fit a `sockaddr_un`).
    public func send(_ bytes: [UInt8], to path: String) throws(Errno) {
        var (address, length) = try Self.makeAddress(path)
        let descriptor = descriptor
        _ = try systemCall {
            bytes.withUnsafeBytes { buffer in
                withUnsafePointer(to: &address) { pointer in
                    pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        sendto(descriptor, buffer.baseAddress, buffer.count, Int32(MSG_DONTWAIT | MSG_NOSIGNAL), $0, length)
                    }
                }
            }
        }
    }

    /// A socket connected to the one bound at `path`: a client of a Unix datagram listener,
    /// whose `send(_:)` waits while the listener's queue is full (no datagram is lost).
    ///
    /// - Throws: `Errno` (`ENOENT` or `ECONNREFUSED`: nobody listens there).
    public static func connected(to path: String) throws(Errno) -> UnixDatagramSocket {
        let socket = try unbound()
        var (address, length) = try makeAddress(path)
        let descriptor = socket.descriptor
        _ = try systemCall {
            withUnsafePointer(to: &address) { pointer in
                pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(descriptor, $0, length) }
            }
        }
        return socket
    }

    /// Sends `bytes` as one datagram to the connected peer, waiting for room in its queue.
    ///
    /// - Throws: `Errno` (`ECONNREFUSED`: the listener closed; `EPERM`: it takes no new
    ///   datagram, being removed).
    public func send(_ bytes: [UInt8]) throws(Errno) {
        let descriptor = descriptor
        _ = try systemCall {
            bytes.withUnsafeBytes { buffer in Glibc.send(descriptor, buffer.baseAddress, buffer.count, Int32(MSG_NOSIGNAL)) }
        }
    }

    /// Receives one datagram, waiting at most `timeoutMilliseconds`; `nil` when none came.
    public func receive(timeoutMilliseconds: Int32, maximumBytes: Int = 4_096) throws(Errno) -> [UInt8]? {
        var waiter = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
        guard try systemCall({ poll(&waiter, 1, timeoutMilliseconds) }) > 0 else { return nil }
        var buffer = [UInt8](repeating: 0, count: maximumBytes)
        let descriptor = descriptor
        let count = try systemCall { buffer.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) } }
        return Array(buffer.prefix(count))
    }

    /// `path` as a `sockaddr_un` and its length.
    ///
    /// - Throws: `ENAMETOOLONG` when it does not fit, `EINVAL` when it is empty.
    private static func makeAddress(_ path: String) throws(Errno) -> (sockaddr_un, socklen_t) {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        var bytes = Array(path.utf8)
        let abstract = bytes.first == UInt8(ascii: "@")
        if abstract { bytes[0] = 0 }
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard !bytes.isEmpty else { throw Errno(rawValue: EINVAL) }
        // A file system path keeps room for its terminating NUL; an abstract name has none.
        guard bytes.count <= (abstract ? capacity : capacity - 1) else { throw Errno(rawValue: ENAMETOOLONG) }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in raw.copyBytes(from: bytes) }
        let length = socklen_t(MemoryLayout<sockaddr_un>.offset(of: \.sun_path)! + bytes.count + (abstract ? 0 : 1))
        return (address, length)
    }
}
