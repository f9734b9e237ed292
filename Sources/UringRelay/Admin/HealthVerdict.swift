/// What `GET /healthz` answers: 200 `ok` while every worker runs and has published its counters
/// recently and no stop was asked for; 503 with a one-line reason otherwise.
///
/// A worker publishes its counters at a loop turn boundary (`CounterBoard`): every 100 ms while
/// traffic flows, and at least every 250 ms (`RelayCore.heartbeatNanoseconds`) while none does.
/// A board left unpublished for `staleAfterNanoseconds` means the worker's loop is stuck or gone.
public struct HealthVerdict: Sendable, Equatable {
    /// Whether the relay is healthy (200) or not (503).
    public var healthy: Bool
    /// `ok`, or why not, on one line.
    public var reason: String

    /// A verdict as given.
    public init(healthy: Bool, reason: String) {
        self.healthy = healthy
        self.reason = reason
    }

    /// How long a worker may go without publishing before it counts as stale: four heartbeats,
    /// so an idle worker on a busy host is not stale, but a stuck one is within a second.
    public static let staleAfterNanoseconds: UInt64 = 4 * RelayCore.heartbeatNanoseconds

    /// The verdict for a relay in this state.
    ///
    /// - Parameters:
    ///   - started: whether the relay's start has completed (every worker runs).
    ///   - stopping: whether a stop was asked for.
    ///   - stopAnnounced: whether a stop was announced (`--stop-delay`): the relay still relays
    ///     but is going out of service.
    ///   - expectedWorkers: how many workers the relay runs when started.
    ///   - publishedAt: when each started worker last published (monotonic nanoseconds).
    ///   - failures: workers that stopped on an error.
    ///   - now: the monotonic time.
    ///   - staleAfter: see `staleAfterNanoseconds`.
    public static func evaluate(
        started: Bool, stopping: Bool, stopAnnounced: Bool = false, expectedWorkers: Int, publishedAt: [UInt64], failures: [String], now: UInt64,
        staleAfter: UInt64 = staleAfterNanoseconds
    ) -> HealthVerdict {
        if stopping { return HealthVerdict(healthy: false, reason: "stopping: draining and flushing before exit") }
        if stopAnnounced {
            return HealthVerdict(healthy: false, reason: "stopping: out of service for --stop-delay, still relaying until the drain")
        }
        if let failure = failures.first {
            return HealthVerdict(healthy: false, reason: oneLine("stopped on a failure: \(failure)"))
        }
        if !started || publishedAt.count < expectedWorkers {
            return HealthVerdict(healthy: false, reason: "starting: \(publishedAt.count) of \(expectedWorkers) workers started")
        }
        let ages = publishedAt.map { now &- min(now, $0) }
        if let stalest = ages.indices.max(by: { ages[$0] < ages[$1] }), ages[stalest] > staleAfter {
            return HealthVerdict(
                healthy: false,
                reason: "worker \(stalest) has published no counters for \(seconds(ages[stalest])) (stale after \(seconds(staleAfter)))")
        }
        return HealthVerdict(healthy: true, reason: "ok")
    }

    /// `text` on one line, at most 200 characters (control characters as spaces).
    static func oneLine(_ text: String) -> String {
        let flat = String(text.unicodeScalars.map { $0.properties.generalCategory == .control ? " " : Character($0) })
        return flat.count > 200 ? String(flat.prefix(199)) + "…" : flat
    }

    /// Nanoseconds as seconds with one decimal, e.g. `3.2s`.
    static func seconds(_ nanoseconds: UInt64) -> String {
        let tenths = (nanoseconds + 50_000_000) / 100_000_000
        return "\(tenths / 10).\(tenths % 10)s"
    }
}
