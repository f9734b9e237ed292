import RelayKernel
import Synchronization

/// One worker's counters as last published, readable from any thread.
///
/// The worker copies its plain counters in at most every `publishIntervalNanoseconds` (at a loop
/// turn boundary, never per datagram); readers (SIGUSR1, the admin endpoint) take the copy. The
/// lock is held only for the copy, by one writer and rare readers, so the data path never waits
/// on a reader for longer than a copy of a few hundred integers.
public final class CounterBoard: Sendable {
    /// How often a running worker publishes: live values lag the traffic by at most this.
    public static let publishIntervalNanoseconds: UInt64 = 100_000_000

    private let latest: Mutex<(counters: RelayCounters?, at: UInt64)>

    /// An empty board (nothing published yet), stamped with the time it was made.
    public init() { latest = Mutex((nil, MonotonicClock.nanoseconds())) }

    /// Replaces the published counters and stamps the time (the worker's heartbeat: `/healthz`
    /// calls a worker stale when its board has not been published for a while).
    ///
    /// - Parameter now: the monotonic time of the publication (a worker passes its turn's time).
    public func publish(_ counters: RelayCounters, at now: UInt64 = MonotonicClock.nanoseconds()) {
        latest.withLock { $0 = (counters, now) }
    }

    /// The counters last published, or `nil` before the first publication.
    public var counters: RelayCounters? { latest.withLock { $0.counters } }

    /// When the counters were last published (monotonic nanoseconds), or when the board was
    /// made if they never were.
    public var publishedAt: UInt64 { latest.withLock { $0.at } }
}
