import Glibc

/// A POSIX error number, as returned by a system call or carried (negated) in a CQE.
///
/// Modelled on swift-system's `Errno`, which cannot be used here: its C module declares the
/// kernel's io_uring structures too, and they clash with liburing's copy of the same header.
public struct Errno: Error, Equatable, Hashable, Sendable, CustomStringConvertible {
    /// The error number (`EINTR`, `EAGAIN`, …).
    public let rawValue: Int32

    /// Wraps an error number.
    public init(rawValue: Int32) { self.rawValue = rawValue }

    /// The calling thread's current `errno`.
    static var current: Errno { Errno(rawValue: errno) }

    /// `ENOSYS`: the kernel lacks the call.
    public static let noFunction = Errno(rawValue: ENOSYS)
    /// `EPERM`.
    public static let notPermitted = Errno(rawValue: EPERM)
    /// `EACCES`.
    public static let permissionDenied = Errno(rawValue: EACCES)
    /// `ENOMEM`.
    public static let outOfMemory = Errno(rawValue: ENOMEM)
    /// `EINVAL`.
    public static let invalidArgument = Errno(rawValue: EINVAL)
    /// `EMSGSIZE`.
    public static let messageTooLong = Errno(rawValue: EMSGSIZE)

    /// `Address already in use (errno 98)`: the reason, then the number operators search for.
    public var operatorDescription: String {
        "\(String(cString: strerror(rawValue))) (errno \(rawValue))"
    }

    public var description: String { operatorDescription }
}
