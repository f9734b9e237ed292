import CLiburing
import Glibc

/// The file a Unix datagram listener bound (its path, device and inode), so that it is removed
/// only while the path still names that socket: a successor that bound the same path since
/// keeps its own.
public struct UnixListenerFile: Sendable, Equatable {
    /// The path bound.
    public let path: String
    let device: UInt64
    let inode: UInt64

    /// The socket file at `path` now, if there is one.
    public static func current(at path: String) -> UnixListenerFile? {
        var status = stat()
        guard lstat(path, &status) == 0, (status.st_mode & S_IFMT) == S_IFSOCK else { return nil }
        return UnixListenerFile(path: path, device: UInt64(status.st_dev), inode: UInt64(status.st_ino))
    }

    /// Sets the file's permission bits (`chmod(2)`), if the path still names this socket file:
    /// a mode changed by a reload.
    ///
    /// - Throws: `SystemCallError` for `chmod PATH`: the system's reason, or `ENOENT` with a hint
    ///   when the path no longer names this socket (removed, or another file put there).
    public func setMode(_ mode: UInt32) throws(SystemCallError) {
        guard UnixListenerFile.current(at: path) == self else {
            throw SystemCallError(
                "chmod", path, Errno(rawValue: ENOENT),
                hint: "the path no longer names this relay's socket (removed, or another file put there): left as it is")
        }
        do throws(Errno) { _ = try systemCall { chmod(path, mode_t(mode)) } } catch { throw SystemCallError("chmod", path, error) }
    }

    /// Removes the path if it still names this socket file; closes nothing.
    ///
    /// - Returns: whether it was removed.
    @discardableResult
    public func removeIfOwned() -> Bool {
        guard UnixListenerFile.current(at: path) == self else { return false }
        return unlink(path) == 0
    }
}

/// A Unix datagram listener (`AF_UNIX`, `SOCK_DGRAM`): the relay's `--unix-socket`. It is held
/// as a `UDPSocket`, the relay's owner of a datagram listener's descriptor, since everything a
/// worker does with one (`recv` multishot, `recvmmsg`, `MSG_PEEK`, `SO_MEMINFO`, `connect` to
/// itself to refuse new datagrams, `SCM_RIGHTS`) works alike on both families.
///
/// It cannot be shared through `SO_REUSEPORT` (a path binds once): one socket is bound and every
/// worker reads a duplicate of it (each datagram is taken by exactly one reader).
extension UDPSocket {
    /// A Unix datagram socket bound to `path`, with file mode `mode` (its file, to remove at
    /// exit: `UnixListenerFile.current(at:)`).
    ///
    /// A socket file left at `path` by a process that died (a datagram `connect` to it is
    /// refused: nobody has it open) is replaced. A path where a live socket answers, or a file
    /// that is not a socket, is refused and left alone.
    ///
    /// - Parameters:
    ///   - path: a file system path (no abstract `@` name: it has no mode and no file to remove).
    ///   - mode: the file's permission bits (`chmod(2)`), e.g. `0o660`: who may send.
    ///   - receiveBufferBytes: requested `SO_RCVBUF` (forced where permitted).
    /// - Throws: `SystemCallError` for `bind unix PATH` (with a hint when a live process or
    ///   another file holds the path), or the call that failed (what was bound is removed).
    public static func listening(
        unixPath path: String, mode: UInt32, receiveBufferBytes: Int? = nil
    ) throws(SystemCallError) -> UDPSocket {
        guard let address = SocketAddress(unixPath: path) else {
            throw SystemCallError("bind unix", path, Errno(rawValue: ENAMETOOLONG), hint: "a Unix listener needs a file system path of 1-107 bytes")
        }
        let socket: UDPSocket
        do throws(Errno) {
            socket = UDPSocket(descriptor: try systemCall { Glibc.socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) })
        } catch { throw SystemCallError("socket unix", path, error) }
        if let bytes = receiveBufferBytes {
            let value = Int32(clamping: bytes)
            do throws(Errno) { try socket.setOption(SOL_SOCKET, SO_RCVBUFFORCE, value) } catch {
                do throws(Errno) { try socket.setOption(SOL_SOCKET, SO_RCVBUF, value) } catch {
                    throw SystemCallError("setsockopt SO_RCVBUF", path, error)
                }
            }
        }
        let descriptor = socket.descriptor
        func bindOnce() throws(Errno) {
            _ = try address.withUnsafeSockaddr { pointer, length throws(Errno) in
                try systemCall { bind(descriptor, pointer, length) }
            }
        }
        try UnixSocketPath.bind(
            path, mode: mode_t(mode),
            servedHint: "a running process (another relay?) receives on this socket; stop it, or choose another path",
            isServed: { answers(at: address) }, bindOnce: bindOnce)
        return socket
    }

    /// Whether a live socket is bound at `address`: a datagram `connect(2)` to it succeeds
    /// (refused, `ECONNREFUSED`, when the file's socket is closed).
    private static func answers(at address: SocketAddress) -> Bool {
        let probe = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard probe >= 0 else { return false }
        defer { _ = CLiburing.close(probe) }
        let result = address.withUnsafeSockaddr { pointer, length in connect(probe, pointer, length) }
        // Any failure but "refused" (a permission denied by the file's mode, say) is taken as
        // live: a file is replaced only when it is certainly dead.
        return result == 0 || errno != ECONNREFUSED
    }
}
