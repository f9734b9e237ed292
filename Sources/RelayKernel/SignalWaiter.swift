import CLiburing
import Glibc

/// Signals taken synchronously: blocked in every thread, then awaited with `sigwait(3)` on the
/// main thread, so no handler runs at an arbitrary point and no signal's default action (most
/// of them terminate the process) can strike a worker.
public struct SignalWaiter: Sendable {
    private let signals: [Int32]

    /// The signals the relay takes on its main thread: `stopSignals` stop it; `SIGHUP`,
    /// `SIGUSR1` and `noticedSignals` are answered in the log and never stop it.
    public static let relaySignals: [Int32] = stopSignals + [SIGHUP, SIGUSR1] + noticedSignals

    /// The signals that stop the relay as `SIGTERM` does (drain and flush): `SIGQUIT` too,
    /// nginx's graceful stop, rather than its default action, a core dump with nothing flushed.
    public static let stopSignals: [Int32] = [SIGTERM, SIGINT, SIGQUIT]

    /// Signals with no meaning to the relay whose default action would end it at once, losing
    /// what it holds: taken, logged at notice, and otherwise ignored. A stray `kill -ALRM` or a
    /// profiler's timer (`SIGPROF`) must not cost data.
    public static let noticedSignals: [Int32] = [SIGUSR2, SIGALRM, SIGVTALRM, SIGPROF, SIGIO, SIGPWR, SIGSTKFLT]

    /// Signals set to `SIG_IGN` for the whole process: `SIGPIPE` (a write to a closed pipe or
    /// socket fails with `EPIPE` instead), `SIGXFSZ` (a write past `ulimit -f`, a log file at
    /// its limit, fails with `EFBIG` instead of killing the relay); the log writer counts both.
    public static let ignoredSignals: [Int32] = [SIGPIPE, SIGXFSZ]

    /// Whether `signal` is one of `stopSignals`.
    public static func isStop(_ signal: Int32) -> Bool { stopSignals.contains(signal) }

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

    /// Waits until one of the signals arrives, `event` is signalled, or the timeout passes.
    ///
    /// For a wait that must answer a stop at once while something else completes on another
    /// thread (the start-up's name lookups). The signals stay blocked: a `signalfd(2)` reads
    /// them, polled with the event's eventfd.
    /// - Parameter timeoutNanoseconds: the longest wait; `nil` waits without limit.
    /// - Returns: the signal taken, or `nil` when the event is signalled or the time is up (or
    ///   the signalfd cannot be created; the caller then looks at its event and waits again).
    public func wait(orUntil event: WakeupEvent, timeoutNanoseconds: UInt64?) -> Int32? {
        var set = sigset_t()
        sigemptyset(&set)
        for signal in signals { sigaddset(&set, signal) }
        guard let descriptor = try? systemCall({ signalfd(-1, &set, Int32(SFD_CLOEXEC | SFD_NONBLOCK)) }) else {
            _ = event.wait(timeoutNanoseconds: timeoutNanoseconds.map { min($0, 10_000_000) } ?? 10_000_000)
            return nil
        }
        // close(2) is not retried: see `systemCall`.
        defer { _ = close(descriptor) }
        var pollers = [
            pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0),
            pollfd(fd: event.descriptor, events: Int16(POLLIN), revents: 0),
        ]
        let deadline = timeoutNanoseconds.map { MonotonicClock.nanoseconds() &+ $0 }
        // The timeout is recomputed on every EINTR retry, so the deadline holds.
        _ = try? systemCall { () -> Int32 in
            var milliseconds: Int32 = -1
            if let deadline {
                let now = MonotonicClock.nanoseconds()
                milliseconds = now >= deadline ? 0 : Int32(clamping: (deadline - now + 999_999) / 1_000_000)
            }
            return poll(&pollers, nfds_t(pollers.count), milliseconds)
        }
        guard pollers[0].revents != 0 else { return nil }
        var info = signalfd_siginfo()
        let size = MemoryLayout<signalfd_siginfo>.size
        guard (try? systemCall({ read(descriptor, &info, size) })) == size else { return nil }
        return Int32(bitPattern: info.ssi_signo)
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
        case SIGQUIT: "SIGQUIT"
        case SIGALRM: "SIGALRM"
        case SIGVTALRM: "SIGVTALRM"
        case SIGPROF: "SIGPROF"
        case SIGIO: "SIGIO"
        case SIGPWR: "SIGPWR"
        case SIGSTKFLT: "SIGSTKFLT"
        case SIGXFSZ: "SIGXFSZ"
        default: "signal \(signal)"
        }
    }
}
