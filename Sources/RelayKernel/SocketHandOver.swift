import Synchronization

/// Hands a bound socket to the thread that will own it: taken once, by that thread.
///
/// Unlike `SocketBox`, the receiver takes the socket out (it joins the receiver's own
/// non-copyable listener array). A socket never taken closes with the hand-over.
public final class SocketHandOver: Sendable, Equatable {
    private let socket: Mutex<UDPSocket?>

    /// Wraps `socket` for hand-over.
    public init(_ socket: consuming sending UDPSocket) { self.socket = Mutex(Optional(socket)) }

    /// The socket, the first time; `nil` after.
    public func take() -> UDPSocket? { socket.withLock { $0.take() } }

    /// One hand-over is equal only to itself.
    public static func == (lhs: SocketHandOver, rhs: SocketHandOver) -> Bool { lhs === rhs }
}
