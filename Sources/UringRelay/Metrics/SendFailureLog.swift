import RelayKernel

/// Decides, from the relay's counters, which failed sends to tell the log about, and when.
///
/// Counting a failed send is all the send path does (`statsrelay.backend.send_errors`); this
/// reads the published counters off that path (`SendFailureWatch`, once a second) and turns a
/// rise into a log line per backend: the first failures of a backend at once, then at most one
/// line per `quietNanoseconds` with everything that failed meanwhile. So a backend whose every
/// send fails costs one log line every ten seconds, not one per packet, and no failure goes
/// unsaid.
public struct SendFailureLog: Sendable {
    /// One log line: what failed for one backend since its previous line.
    public struct Entry: Equatable, Sendable {
        /// The backend's identity as written (`host:port[:instance]`).
        public var backend: String
        /// Packets the kernel did not take (`send_errors`).
        public var packets: UInt64
        /// Their lines, lost (`lines_dropped.send_error`).
        public var lines: UInt64
        /// Nanoseconds since the backend's previous line, or `nil` for its first.
        public var sinceLast: UInt64?
    }

    /// The shortest time between two lines about one backend.
    public let quietNanoseconds: UInt64
    /// Per backend identity: the counts as of its last line, and when that was.
    private var told: [String: (packets: UInt64, lines: UInt64, at: UInt64)] = [:]

    /// A log that says nothing about a backend more often than every `quietNanoseconds`.
    public init(quietNanoseconds: UInt64 = 10_000_000_000) {
        self.quietNanoseconds = quietNanoseconds
    }

    /// The lines to log now, given the relay's counters (every worker's, summed) at `now`.
    public mutating func check(_ counters: RelayCounters, now: UInt64) -> [Entry] {
        var entries: [Entry] = []
        for backend in counters.backends {
            let packets = counters[.sendErrors, backend: backend]
            let previous = told[backend]
            guard packets > (previous?.packets ?? 0) else { continue }
            if let previous, now &- previous.at < quietNanoseconds { continue }
            let lines = counters[.linesDroppedSendError, backend: backend]
            entries.append(Entry(
                backend: backend, packets: packets &- (previous?.packets ?? 0), lines: lines &- (previous?.lines ?? 0),
                sinceLast: previous.map { now &- $0.at }))
            told[backend] = (packets, lines, now)
        }
        return entries
    }
}
