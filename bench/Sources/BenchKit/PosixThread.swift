import Glibc

/// A joinable POSIX thread that runs one closure; the receivers use plain threads, not Swift concurrency,
/// so that each owns a core-bound blocking `recvmmsg(2)` loop.
public final class PosixThread: Sendable {
    /// The `pthread_t` of the running thread.
    private let handle: pthread_t

    /// Holds the closure while it crosses the C entry point.
    private final class Start: Sendable {
        /// The work the thread runs.
        let body: @Sendable () -> Void

        /// Wraps `body`.
        init(_ body: @escaping @Sendable () -> Void) {
            self.body = body
        }
    }

    /// Starts a thread running `body`.
    public init(_ body: @escaping @Sendable () -> Void) throws(BenchError) {
        let start = Unmanaged.passRetained(Start(body)).toOpaque()
        var thread = pthread_t()
        let result = pthread_create(&thread, nil, { argument in
            let start = Unmanaged<Start>.fromOpaque(argument!).takeRetainedValue()
            start.body()
            return nil
        }, start)
        guard result == 0 else {
            Unmanaged<Start>.fromOpaque(start).release()
            throw .system("pthread_create", code: result)
        }
        handle = thread
    }

    /// Waits for the thread to finish.
    public func join() {
        _ = pthread_join(handle, nil)
    }
}
