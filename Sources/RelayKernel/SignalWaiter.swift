import CLiburing
import Glibc

/// Termination signals taken synchronously: blocked in every thread, then awaited with
/// `sigwait(3)` on the main thread, so no handler runs at an arbitrary point.
public struct SignalWaiter: Sendable {
    private let signals: [Int32]

    /// Blocks `signals` for the calling thread and every thread it starts afterwards.
    ///
    /// - Precondition: call before starting any worker thread.
    public init(blocking signals: [Int32] = [SIGTERM, SIGINT]) {
        self.signals = signals
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
        default: "signal \(signal)"
        }
    }
}
