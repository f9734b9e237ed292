import Synchronization

/// Hands a bound TCP listening socket to the worker that will own it: taken once, by that
/// worker (as `SocketHandOver` does a UDP socket). A socket never taken closes with the
/// hand-over.
public final class TCPListenerHandOver: Sendable, Equatable {
    private let socket: Mutex<TCPListenSocket?>

    /// Wraps `socket` for hand-over.
    public init(_ socket: consuming sending TCPListenSocket) { self.socket = Mutex(Optional(socket)) }

    /// The socket, the first time; `nil` after.
    public func take() -> TCPListenSocket? { socket.withLock { $0.take() } }

    /// One hand-over is equal only to itself.
    public static func == (lhs: TCPListenerHandOver, rhs: TCPListenerHandOver) -> Bool { lhs === rhs }
}
