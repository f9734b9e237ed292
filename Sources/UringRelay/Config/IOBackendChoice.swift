/// Which I/O driver feeds the relay core (`--io-backend`).
public enum IOBackendChoice: String, CaseIterable, Sendable {
    /// io_uring when the kernel allows everything the uring driver uses, else portable.
    case auto
    /// The io_uring driver: multishot `recv` on a provided-buffer ring, batched sends.
    case uring
    /// The portable driver: `recvmmsg`/`sendmmsg`, for where io_uring is blocked.
    case portable
}
