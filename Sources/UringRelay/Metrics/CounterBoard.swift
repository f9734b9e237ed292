import Synchronization

/// One worker's counters as last published, readable from any thread.
///
/// The worker copies its plain counters in at most every `publishIntervalNanoseconds` (at a loop
/// turn boundary, never per datagram); readers (SIGUSR1, later the metrics endpoint) take the
/// copy. The lock is held only for the copy, by one writer and rare readers, so the data path
/// never waits on a reader for longer than a copy of a few hundred integers.
public final class CounterBoard: Sendable {
    /// How often a running worker publishes: live values lag the traffic by at most this.
    public static let publishIntervalNanoseconds: UInt64 = 100_000_000

    private let latest: Mutex<RelayCounters?>

    /// An empty board (nothing published yet).
    public init() { latest = Mutex(nil) }

    /// Replaces the published counters.
    public func publish(_ counters: RelayCounters) {
        latest.withLock { $0 = counters }
    }

    /// The counters last published, or `nil` before the first publication.
    public var counters: RelayCounters? { latest.withLock { $0 } }
}
