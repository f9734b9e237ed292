import Glibc
import Synchronization

/// The process's one writer to a log descriptor (standard error): log lines, start-up errors
/// and counter reports all go through it, whole, one writer at a time.
///
/// A log must never stop or slow relaying, so a write that cannot be done now is dropped and
/// counted, never retried in a loop and never fatal:
/// - a closed reader (`statsrelay … 2>&1 | head -c1`) fails with `EPIPE` (the relay ignores
///   `SIGPIPE`, which would otherwise kill it);
/// - a reader that has fallen behind (a full pipe or socket) fails the readiness check before
///   the write, or `EAGAIN` on a non-blocking descriptor;
/// - any other error (`EBADF`, `EIO`, `ENOSPC`).
/// Each message is written in pieces of at most `PIPE_BUF` bytes after `poll(2)` said the
/// descriptor is writable, so a piece never blocks on a pipe: the kernel accepts up to
/// `PIPE_BUF` bytes whole once a pipe has room.
public final class LogWriter: Sendable {
    /// Standard error, shared by the whole process; its `failedWrites` is the
    /// `statsrelay.log_write_errors` counter.
    public static let standardError = LogWriter(descriptor: 2)

    private let descriptor: Int32
    private let lock = Mutex(())
    private let failures = Atomic<UInt64>(0)

    /// The largest piece written after one readiness check (`PIPE_BUF`).
    private static let pieceBytes = 4096

    /// A writer to `descriptor`, which it does not own (never closes).
    public init(descriptor: Int32) {
        self.descriptor = descriptor
    }

    /// Messages dropped, wholly or in part, because the descriptor could not take them.
    public var failedWrites: UInt64 { failures.load(ordering: .relaxed) }

    /// Writes `text` whole, or drops what is left of it and counts one failure.
    ///
    /// - Parameters:
    ///   - text: the message, with its own line ending.
    ///   - patienceMilliseconds: how long, in all, to wait for a reader that is behind. Log
    ///     lines pass 0: a thread that logs (a worker, the health monitor) never waits for the
    ///     reader. Reports printed on the main thread at start-up and exit may wait a little.
    public func write(_ text: String, patienceMilliseconds: Int32 = 0) {
        var text = text
        let delivered = lock.withLock { _ in
            text.withUTF8 { bytes in writeAll(bytes, patienceMilliseconds: patienceMilliseconds) }
        }
        if !delivered { failures.add(1, ordering: .relaxed) }
    }

    /// Writes every byte, piece by piece; `false` as soon as a piece cannot be written.
    private func writeAll(_ bytes: UnsafeBufferPointer<UInt8>, patienceMilliseconds: Int32) -> Bool {
        guard let base = bytes.baseAddress else { return true }
        let deadline = MonotonicClock.nanoseconds() &+ UInt64(max(0, patienceMilliseconds)) * 1_000_000
        var written = 0
        while written < bytes.count {
            let now = MonotonicClock.nanoseconds()
            let wait = now >= deadline ? 0 : Int32((deadline - now + 999_999) / 1_000_000)
            var poller = pollfd(fd: descriptor, events: Int16(POLLOUT), revents: 0)
            let ready = poll(&poller, 1, wait)
            if ready < 0 && errno == EINTR { continue }
            // No event in time: the reader is behind. Any event (POLLOUT, or POLLERR for a pipe
            // whose reader is gone) lets the write say what it is.
            guard ready > 0 else { return false }
            let piece = min(Self.pieceBytes, bytes.count - written)
            let result = Glibc.write(descriptor, base + written, piece)
            if result > 0 {
                written += result
            } else if result < 0 && errno == EINTR {
                continue
            } else {
                return false
            }
        }
        return true
    }
}
