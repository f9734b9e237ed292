import Dispatch
import Logging
import RelayKernel
import Synchronization

/// Logs failed sends, rate-limited, from a timer off the data path: once a second it reads the
/// counters the workers publish and logs what `SendFailureLog` says, at error (the lines of a
/// failed send are lost).
///
/// A worker never logs a failed send itself: the send path only counts it.
public final class SendFailureWatch: Sendable {
    private let logger: Logger
    private let periodNanoseconds: UInt64
    private let log: Mutex<SendFailureLog>
    /// The running timer, if started; a `DispatchSourceTimer` is thread-safe to cancel.
    private let timer = Mutex<(any DispatchSourceTimer)?>(nil)
    private let queue = DispatchQueue(label: "statsrelay.send-failures")

    /// A watch that checks every `periodNanoseconds` and says nothing about one backend more
    /// often than every `quietNanoseconds`.
    public init(logger: Logger, periodNanoseconds: UInt64 = 1_000_000_000, quietNanoseconds: UInt64 = 10_000_000_000) {
        self.logger = logger
        self.periodNanoseconds = periodNanoseconds
        log = Mutex(SendFailureLog(quietNanoseconds: quietNanoseconds))
    }

    /// Starts checking `counters` (the relay's live counters); a second call does nothing.
    public func start(counters: @escaping @Sendable () -> RelayCounters) {
        timer.withLock { running in
            guard running == nil else { return }
            let source = DispatchSource.makeTimerSource(queue: queue)
            source.schedule(
                deadline: .now() + .nanoseconds(Int(periodNanoseconds)), repeating: .nanoseconds(Int(periodNanoseconds)),
                leeway: .milliseconds(100))
            source.setEventHandler { [self] in check(counters(), now: MonotonicClock.nanoseconds()) }
            source.resume()
            running = source
        }
    }

    /// Stops checking; returns at once.
    public func stop() {
        timer.withLock { running in
            running?.cancel()
            running = nil
        }
    }

    /// Logs what `counters` say failed since the last lines, as far as the rate limit allows.
    func check(_ counters: RelayCounters, now: UInt64) {
        let entries = log.withLock { $0.check(counters, now: now) }
        for entry in entries {
            logger.error("sends to a backend failed: the kernel took none of these packets, and their lines are lost", metadata: [
                "backend": "\(entry.backend)",
                "packets": "\(entry.packets)",
                "lines": "\(entry.lines)",
                "period": "\(entry.sinceLast.map { "\(($0 + 500_000_000) / 1_000_000_000)s" } ?? "since start")",
                "counter": "statsrelay.backend.send_errors",
            ])
        }
    }
}
