import Glibc

/// Reads a small file whole: the configuration file, at start-up and at each SIGHUP.
///
/// One `open`, `read`s until end of file, one `close`; every call through `systemCall`, so an
/// error reads like `open /etc/statsrelay/statsrelay.yaml: No such file or directory (errno 2)`.
/// Only a regular file is read: a FIFO put at the path would block the reading thread (the
/// main thread, which also takes the stop signals) until a writer came and went, and a device
/// or a directory is no configuration.
public enum FileContents {
    /// The most a file may hold: a configuration of thousands of backends is a few hundred KiB.
    public static let defaultLimitBytes = 4 << 20

    /// The bytes of the file at `path`.
    ///
    /// - Parameter limitBytes: the largest file read; a larger one (or a file that grows while
    ///   it is read) is refused with `EFBIG`.
    /// - Throws: `SystemCallError` naming the call (`open`, `fstat`, `read`) and the path; for
    ///   anything but a regular file, `EINVAL` with the hint "not a regular file".
    public static func read(path: String, limitBytes: Int = defaultLimitBytes) throws(SystemCallError) -> [UInt8] {
        let descriptor: Int32
        do throws(Errno) {
            // Non-blocking: opening a FIFO for reading would otherwise wait for a writer.
            descriptor = try systemCall { open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK) }
        } catch {
            throw SystemCallError("open", path, error)
        }
        defer { close(descriptor) }
        var status = stat()
        do throws(Errno) {
            _ = try systemCall { fstat(descriptor, &status) }
        } catch {
            throw SystemCallError("fstat", path, error)
        }
        guard status.st_mode & S_IFMT == S_IFREG else {
            throw SystemCallError("open", path, Errno(rawValue: EINVAL), hint: "not a regular file (\(Self.kind(status.st_mode)))")
        }
        var contents: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64 << 10)
        while true {
            let count: Int
            do throws(Errno) {
                count = try systemCall { chunk.withUnsafeMutableBytes { Glibc.read(descriptor, $0.baseAddress, $0.count) } }
            } catch {
                throw SystemCallError("read", path, error)
            }
            if count == 0 { return contents }
            // `count` is what the kernel reported, at most the chunk's size.
            contents.append(contentsOf: chunk[0..<count])
            if contents.count > limitBytes {
                throw SystemCallError("read", path, Errno(rawValue: EFBIG), hint: "larger than \(limitBytes >> 20) MiB")
            }
        }
    }

    /// What a file of mode `mode` is, in words, for a refusal.
    static func kind(_ mode: mode_t) -> String {
        switch mode & S_IFMT {
        case S_IFDIR: "a directory"
        case S_IFIFO: "a FIFO"
        case S_IFCHR: "a character device"
        case S_IFBLK: "a block device"
        case S_IFSOCK: "a socket"
        default: "not a plain file"
        }
    }
}
