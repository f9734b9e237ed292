import CLiburing
import Glibc

/// Signals taken synchronously: blocked in every thread, then awaited with `sigwait(3)` on the
/// main thread, so no handler runs at an arbitrary point and no signal's default action (most
/// of them terminate the process) can strike a worker.
public struct SignalWaiter: Sendable {
    private let signals: [Int32]

    /// The signals the relay takes on its main thread: `SIGTERM` and `SIGINT` stop it;
    /// `SIGHUP`, `SIGUSR1` and `SIGUSR2` are answered in the log and never stop it.
    public static let relaySignals: [Int32] = [SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2]

    /// Blocks `signals` for the calling thread and every thread it starts afterwards, and sets
    /// `ignoring` to `SIG_IGN` for the whole process.
    ///
    /// Ignore `SIGPIPE`: then a write to a closed pipe or socket (a log reader that went away)
    /// fails with `EPIPE` where the caller can count it, instead of killing the process.
    /// - Precondition: call before starting any thread, so that none can take a blocked signal.
    public init(blocking signals: [Int32] = [SIGTERM, SIGINT], ignoring ignored: [Int32] = []) {
        self.signals = signals
        for signal in ignored { _ = Glibc.signal(signal, SIG_IGN) }
        var set = sigset_t()
        sigemptyset(&set)
        for signal in signals { sigaddset(&set, signal) }
        pthread_sigmask(SIG_BLOCK, &set, nil)
    }

    /// Waits until one of the signals arrives and returns it.
    public func wait() -> Int32 {
        var set = sigset_t()
        sigemptyset(&set)
        for signal in signals { sigaddset(&set, signal) }
        var received: Int32 = 0
        while sigwait(&set, &received) != 0 {}
        return received
    }

    /// The conventional name of a signal number, for the log.
    public static func name(of signal: Int32) -> String {
        switch signal {
        case SIGTERM: "SIGTERM"
        case SIGINT: "SIGINT"
        case SIGHUP: "SIGHUP"
        case SIGUSR1: "SIGUSR1"
        case SIGUSR2: "SIGUSR2"
        case SIGPIPE: "SIGPIPE"
        default: "signal \(signal)"
        }
    }
}
