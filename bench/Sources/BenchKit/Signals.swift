import Glibc

/// Routes `SIGINT`, `SIGTERM` and the internal wake-up (`SIGUSR1`) to one waiting thread.
///
/// Create it on the main thread before starting any other thread: the signals are blocked there and the
/// threads inherit the mask, so the signals stay pending until `wait(nanoseconds:)` collects them.
public struct SignalWaiter: Sendable {
    /// What ended a wait.
    public enum Outcome: Sendable, Equatable {
        /// `SIGINT` or `SIGTERM` arrived.
        case terminate
        /// A receiver asked the main thread to look at the shared state.
        case wake
        /// The timeout passed.
        case timeout
    }

    /// The signals this waiter collects.
    private let set: sigset_t

    /// Blocks `SIGINT`, `SIGTERM` and `SIGUSR1` in the calling thread.
    public init() {
        var signals = sigset_t()
        sigemptyset(&signals)
        sigaddset(&signals, SIGINT)
        sigaddset(&signals, SIGTERM)
        sigaddset(&signals, SIGUSR1)
        pthread_sigmask(SIG_BLOCK, &signals, nil)
        set = signals
    }

    /// Waits up to `timeout` nanoseconds for one of the signals.
    public func wait(nanoseconds timeout: UInt64) -> Outcome {
        var signals = set
        var limit = timespec(tv_sec: Int(timeout / 1_000_000_000), tv_nsec: Int(timeout % 1_000_000_000))
        let received = sigtimedwait(&signals, nil, &limit)
        switch received {
        case SIGINT, SIGTERM: return .terminate
        case SIGUSR1: return .wake
        default: return .timeout
        }
    }

    /// Wakes the waiting thread from any thread of the process.
    public static func wakeMain() {
        kill(getpid(), SIGUSR1)
    }
}
