import CLiburing
import Glibc

/// A Unix stream socket (`AF_UNIX`, `SOCK_STREAM`, close-on-exec) at a file system path: the
/// relay's control socket (`--control-socket`), one connection to it, or a client's end.
///
/// A listening socket remembers the file it bound (device and inode), so that at exit it
/// removes the path only if the path still names it: a successor that bound the same path
/// since keeps its own. The owner closes its descriptor.
public struct UnixStreamSocket: ~Copyable {
    /// The socket's descriptor, for `PollSet`.
    public let descriptor: Int32
    /// The path bound and its file's identity (`st_dev`, `st_ino`), for a listening socket.
    private var bound: (path: String, device: UInt64, inode: UInt64)?

    private init(descriptor: Int32) {
        self.descriptor = descriptor
        bound = nil
    }

    // close(2) is not retried: see `systemCall`.
    deinit { _ = close(descriptor) }

    private static func open() throws(Errno) -> UnixStreamSocket {
        UnixStreamSocket(descriptor: try systemCall { socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) })
    }

    /// A socket listening at `path`, mode 0600 (only the relay's user may connect), accepting
    /// without blocking (`accept` answers `nil` when nobody waits).
    ///
    /// A file left at `path` by a process that died is replaced: a socket file nobody accepts
    /// on (`connect` refused, and only that). A socket someone still serves, a live socket of
    /// another type (a datagram socket: `EPROTOTYPE`, a `--unix` listener's, say), one the
    /// relay may not connect to (`EACCES`), or a file that is not a socket, is left alone and
    /// refused.
    /// - Throws: `SystemCallError` for `bind unix PATH` (with a hint when a live relay or
    ///   another file holds the path), or the call that failed.
    public static func listening(at path: String, backlog: Int32 = 8) throws(SystemCallError) -> UnixStreamSocket {
        var (address, length): (sockaddr_un, socklen_t)
        do throws(Errno) { (address, length) = try makeAddress(path) } catch { throw SystemCallError("bind unix", path, error) }
        var socket: UnixStreamSocket
        do throws(Errno) { socket = try open() } catch { throw SystemCallError("socket unix", path, error) }
        let descriptor = socket.descriptor
        func bindOnce() throws(Errno) {
            _ = try systemCall {
                withUnsafePointer(to: &address) { pointer in
                    pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.bind(descriptor, $0, length) }
                }
            }
        }
        // 0600: connecting needs write permission, and only the relay's user may take over.
        var probe: Errno?
        try UnixSocketPath.bind(
            path, mode: 0o600,
            servedHint: probe?.rawValue == EPROTOTYPE
                ? "a live datagram socket is bound there (a unixgram listener's, this relay's or another process's); give the control socket a path of its own"
                : "a running relay serves this control socket; take it over with --takeover \(path), or stop it first",
            isServed: {
                do throws(SystemCallError) { _ = try connected(to: path) } catch { probe = error.errno }
                return probe?.rawValue != ECONNREFUSED
            },
            bindOnce: bindOnce)
        do throws(Errno) {
            _ = try systemCall { listen(descriptor, backlog) }
            let flags = try systemCall { fcntl(descriptor, F_GETFL) }
            _ = try systemCall { fcntl(descriptor, F_SETFL, flags | O_NONBLOCK) }
        } catch {
            _ = unlink(path)
            throw SystemCallError("listen unix", path, error)
        }
        var status = stat()
        guard stat(path, &status) == 0 else {
            let error = Errno(rawValue: errno)
            throw SystemCallError("stat", path, error)
        }
        socket.bound = (path, UInt64(status.st_dev), UInt64(status.st_ino))
        return socket
    }

    /// Removes the listening socket's path if the path still names this socket (a successor
    /// may have bound the same path since); closes nothing.
    public func removePathIfOwned() {
        guard let bound else { return }
        var status = stat()
        guard stat(bound.path, &status) == 0, UInt64(status.st_dev) == bound.device, UInt64(status.st_ino) == bound.inode else { return }
        _ = unlink(bound.path)
    }

    /// A socket connected to the one listening at `path`.
    ///
    /// - Throws: `SystemCallError` for `connect unix PATH` (`ENOENT`: no file; `ECONNREFUSED`:
    ///   nobody accepts there; `EACCES`: another user's).
    public static func connected(to path: String) throws(SystemCallError) -> UnixStreamSocket {
        var (address, length): (sockaddr_un, socklen_t)
        do throws(Errno) { (address, length) = try makeAddress(path) } catch { throw SystemCallError("connect unix", path, error) }
        let socket: UnixStreamSocket
        do throws(Errno) { socket = try open() } catch { throw SystemCallError("socket unix", path, error) }
        let descriptor = socket.descriptor
        do throws(Errno) {
            _ = try systemCall {
                withUnsafePointer(to: &address) { pointer in
                    pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(descriptor, $0, length) }
                }
            }
        } catch { throw SystemCallError("connect unix", path, error) }
        return socket
    }

    /// The next waiting connection (blocking, close-on-exec), or `nil` when none waits.
    ///
    /// - Throws: `Errno` from `accept4(2)` other than `EAGAIN`.
    public func accept() throws(Errno) -> UnixStreamSocket? {
        let descriptor = self.descriptor
        let connection: UnixStreamSocket
        do throws(Errno) {
            connection = UnixStreamSocket(descriptor: try systemCall { Glibc.accept(descriptor, nil, nil) })
        } catch where error.rawValue == EAGAIN || error.rawValue == EWOULDBLOCK {
            return nil
        }
        // accept4(2) is not exported by Glibc's Swift module; the relay never executes another
        // program, so setting close-on-exec after the fact leaves no window that matters.
        let accepted = connection.descriptor
        _ = try systemCall { fcntl(accepted, F_SETFD, FD_CLOEXEC) }
        return connection
    }

    /// Ends the connection both ways now (`shutdown(2)`, `SHUT_RDWR`), before the descriptor
    /// closes: the peer reads its end at once, and a frame it sends from then on fails
    /// (`EPIPE`) instead of being queued for a reader that has given up.
    public func shutdown() {
        let descriptor = self.descriptor
        // ENOTCONN (the peer is gone already) leaves nothing to end.
        _ = try? systemCall { Glibc.shutdown(descriptor, Int32(SHUT_RDWR)) }
    }

    /// The process at the other end (`SO_PEERCRED`): its pid and uid as at `connect`.
    public var peer: (pid: Int32, uid: UInt32)? {
        // `struct ucred` (pid, uid, gid: 32 bits each) needs _GNU_SOURCE, which Glibc's module lacks.
        var credentials: [UInt32] = [0, 0, 0]
        var length = socklen_t(12)
        let descriptor = self.descriptor
        let read = credentials.withUnsafeMutableBytes { raw in
            try? systemCall { getsockopt(descriptor, SOL_SOCKET, SO_PEERCRED, raw.baseAddress, &length) }
        }
        guard read != nil, length == 12 else { return nil }
        return (Int32(bitPattern: credentials[0]), credentials[1])
    }

    /// `path` as a `sockaddr_un` and its length.
    ///
    /// - Throws: `ENAMETOOLONG` when it does not fit (with its terminating NUL), `EINVAL`
    ///   when it is empty.
    private static func makeAddress(_ path: String) throws(Errno) -> (sockaddr_un, socklen_t) {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard !bytes.isEmpty else { throw Errno(rawValue: EINVAL) }
        guard bytes.count <= capacity - 1 else { throw Errno(rawValue: ENAMETOOLONG) }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in raw.copyBytes(from: bytes) }
        let length = socklen_t(MemoryLayout<sockaddr_un>.offset(of: \.sun_path)! + bytes.count + 1)
        return (address, length)
    }
}
