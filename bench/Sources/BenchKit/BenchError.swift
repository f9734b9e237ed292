import Glibc

/// A failure of one of the benchmark tools, worded for stderr.
public struct BenchError: Error, CustomStringConvertible, Sendable {
    /// What went wrong, in one line.
    public let description: String

    /// Creates an error carrying `description`.
    public init(_ description: String) {
        self.description = description
    }

    /// Creates an error for the system call `call` that failed with `code` (the current `errno` by default).
    public static func system(_ call: String, code: Int32 = errno) -> BenchError {
        BenchError("\(call) failed: \(errnoName(code)) (\(String(cString: strerror(code))))")
    }
}

/// Returns the symbolic name of an `errno` value, such as `EAGAIN`, for the codes the tools meet.
public func errnoName(_ code: Int32) -> String {
    switch code {
    case EAGAIN: "EAGAIN"
    case ENOBUFS: "ENOBUFS"
    case EINTR: "EINTR"
    case ECONNREFUSED: "ECONNREFUSED"
    case EMSGSIZE: "EMSGSIZE"
    case ENOMEM: "ENOMEM"
    case EPERM: "EPERM"
    case EACCES: "EACCES"
    case EADDRINUSE: "EADDRINUSE"
    case EADDRNOTAVAIL: "EADDRNOTAVAIL"
    case EINVAL: "EINVAL"
    case EBADF: "EBADF"
    case ENETUNREACH: "ENETUNREACH"
    default: "errno\(code)"
    }
}

/// Writes `message` and a newline to stderr, unbuffered.
public func printError(_ message: String) {
    var line = message
    line.append("\n")
    line.withUTF8 { bytes in
        var offset = 0
        while offset < bytes.count {
            let written = write(STDERR_FILENO, bytes.baseAddress! + offset, bytes.count - offset)
            if written <= 0 {
                if written < 0 && errno == EINTR { continue }
                return
            }
            offset += written
        }
    }
}
