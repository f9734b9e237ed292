/// Hands a socket to another thread: a reference that can cross into a `@Sendable` closure.
///
/// `UDPSocket` is non-copyable and not `Sendable`, so a thread body cannot capture it directly.
/// The box is `@unchecked Sendable` on one condition, which its users keep: after the hand-over
/// exactly one thread uses the socket. `statsrelay sink`'s receive threads and the tests' senders
/// use it; the socket closes when the last reference to the box goes.
public final class SocketBox: @unchecked Sendable {
    /// The socket, for the one thread that owns it after the hand-over.
    public let socket: UDPSocket

    /// Boxes `socket` for hand-over.
    public init(_ socket: consuming UDPSocket) { self.socket = socket }
}
