import Glibc

/// Binding a Unix socket at a file system path, the one way both kinds the relay binds do it
/// (the control socket, a Unix datagram listener).
enum UnixSocketPath {
    /// Binds with `bindOnce`; a path already taken is replaced only when it is a socket file
    /// nobody serves (`isServed` false: left by a process that died). A socket someone serves,
    /// or a file that is not a socket, is left alone and refused. Then sets the file's `mode`
    /// (the umask decided it until then), removing the file if that fails.
    ///
    /// - Parameter servedHint: what the refusal of a served path tells the operator.
    /// - Throws: `SystemCallError` for `bind unix PATH` (with a hint) or `chmod MODE PATH`.
    static func bind(
        _ path: String, mode: mode_t, servedHint: @autoclosure () -> String, isServed: () -> Bool,
        bindOnce: () throws(Errno) -> Void
    ) throws(SystemCallError) {
        do throws(Errno) {
            try bindOnce()
        } catch where error.rawValue == EADDRINUSE {
            var status = stat()
            guard lstat(path, &status) == 0, (status.st_mode & S_IFMT) == S_IFSOCK else {
                throw SystemCallError("bind unix", path, error, hint: "the path exists and is not a socket; remove it or choose another")
            }
            if isServed() { throw SystemCallError("bind unix", path, error, hint: servedHint()) }
            // Nobody has it open: a file left by a process that died. Replace it.
            _ = unlink(path)
            do throws(Errno) { try bindOnce() } catch { throw SystemCallError("bind unix", path, error) }
        } catch {
            throw SystemCallError("bind unix", path, error)
        }
        do throws(Errno) { _ = try systemCall { chmod(path, mode) } } catch {
            _ = unlink(path)
            throw SystemCallError("chmod \(String(mode, radix: 8))", path, error)
        }
    }
}
