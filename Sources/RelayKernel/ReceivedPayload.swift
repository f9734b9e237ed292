/// What one receive produced, as checked against the kernel's own numbers before any of them
/// is used as a length. Both drivers hand the relay core one of these with the bytes.
public enum ReceivedPayload: Sendable {
    /// The kernel's header for the receive did not add up; nothing is usable.
    case malformed
    /// The datagram was longer than `--max-datagram`; its bytes must not be used.
    /// `fullLength`: its whole length where the receive reports it (io_uring's multishot `recv`
    /// with `MSG_TRUNC`), else what was copied (`recvmmsg`: `--max-datagram` + 1).
    case truncated(fullLength: Int)
    /// A whole datagram of `length` bytes (0 for an empty datagram).
    case datagram(length: Int)
}
