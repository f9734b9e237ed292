import Glibc

/// Runs a libc system call that reports failure as `-1` and `errno`, retrying on `EINTR`.
///
/// Every libc call in `RelayKernel` that reports failure through `errno` goes through here, so no
/// caller forgets the retry; liburing's and the shim's calls return `-errno` instead, and their
/// callers switch on it where they make them. Where a failure is data (`EAGAIN` from a
/// non-blocking read), the caller catches it and says so.
/// `close(2)` is the exception: on Linux the descriptor is gone even when it reports `EINTR`, so a
/// retry could close a descriptor another thread has just been given.
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
/// Renders as `bind udp 0.0.0.0:8125: Address already in use (errno 98)`, followed by `; ` and
/// the hint when there is one (what the operator can do about it).
public struct SystemCallError: Error, CustomStringConvertible, Sendable {
    /// What was attempted, e.g. `bind udp`.
    public var operation: String
    /// What it was attempted on, e.g. `0.0.0.0:8125`.
    public var target: String
    /// Why it failed.
    public var errno: Errno
    /// What the operator can do about it, or `nil` when the reason says enough.
    public var hint: String?

    public init(_ operation: String, _ target: String, _ errno: Errno, hint: String? = nil) {
        self.operation = operation
        self.target = target
        self.errno = errno
        self.hint = hint
    }

    public var description: String {
        let failure = target.isEmpty
            ? "\(operation): \(errno.operatorDescription)"
            : "\(operation) \(target): \(errno.operatorDescription)"
        return hint.map { "\(failure); \($0)" } ?? failure
    }
}
