import CLiburing
import Glibc

/// Turns a liburing-style result (`-errno` on failure) into a value or a thrown `Errno`.
///
/// - Parameter result: the return of a liburing call or a completion's `res`.
/// - Returns: the non-negative result.
@inline(__always)
func liburingResult(_ result: Int32) throws(Errno) -> Int32 {
    if result < 0 { throw Errno(rawValue: -result) }
    return result
}

/// Runs a libc system call that reports failure as `-1` and `errno`, retrying on `EINTR`.
///
/// Every system call in `Kernel/` goes through here, so no caller forgets the retry.
/// - Parameter call: the system call.
/// - Returns: the call's non-negative result.
@inline(__always)
func systemCall<Result: BinaryInteger>(_ call: () -> Result) throws(Errno) -> Result {
    while true {
        let result = call()
        if result >= 0 { return result }
        let code = errno
        if code == EINTR { continue }
        throw Errno(rawValue: code)
    }
}

/// A failed system call at the edge of the program, named by operation and target.
///
/// Renders as `bind udp 0.0.0.0:8125: Address already in use (errno 98)`.
public struct SystemCallError: Error, CustomStringConvertible, Sendable {
    /// What was attempted, e.g. `bind udp`.
    public var operation: String
    /// What it was attempted on, e.g. `0.0.0.0:8125`.
    public var target: String
    /// Why it failed.
    public var errno: Errno

    public init(_ operation: String, _ target: String, _ errno: Errno) {
        self.operation = operation
        self.target = target
        self.errno = errno
    }

    public var description: String {
        target.isEmpty
            ? "\(operation): \(errno.operatorDescription)"
            : "\(operation) \(target): \(errno.operatorDescription)"
    }
}
