import Glibc

/// Reads a small file whole: the configuration file, at start-up and at each SIGHUP.
///
/// One `open`, `read`s until end of file, one `close`; every call through `systemCall`, so an
/// error reads like `open /etc/statsrelay/statsrelay.yaml: No such file or directory (errno 2)`.
public enum FileContents {
    /// The most a file may hold: a configuration of thousands of backends is a few hundred KiB.
    public static let defaultLimitBytes = 4 << 20

    /// The bytes of the file at `path`.
    ///
    /// - Parameter limitBytes: the largest file read; a larger one (or a file that never ends,
    ///   such as a device) is refused with `EFBIG`.
    /// - Throws: `SystemCallError` naming the call (`open`, `read`) and the path.
    public static func read(path: String, limitBytes: Int = defaultLimitBytes) throws(SystemCallError) -> [UInt8] {
        let descriptor: Int32
        do throws(Errno) {
            descriptor = try systemCall { open(path, O_RDONLY | O_CLOEXEC) }
        } catch {
            throw SystemCallError("open", path, error)
        }
        defer { close(descriptor) }
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
}
