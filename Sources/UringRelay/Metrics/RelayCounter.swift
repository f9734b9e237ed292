import RelayKernel

/// The relay's own counters, declared in one table: each case is one counter, with the name
/// operators see (and the Prometheus endpoint will export).
public enum RelayCounter: Int, CaseIterable, Sendable {
    case datagramsReceived
    case bytesReceived
    case linesReceived
    case linesForwarded
    case emptyLines
    case linesDroppedMissingColon
    case linesDroppedEmptyName
    case linesDroppedNulByte
    case linesDroppedNoSendBuffer
    case datagramsTruncated
    case datagramsMalformedHeader
    case bufferRingExhausted
    case receiveRearms
    case receiveErrors
    case packetsSent
    case sendErrors
    case linesDroppedSendError
    case linesRehashed
    case linesDroppedBackendDown
    case linesHeld
    case linesDroppedHoldOverflow
    case linesReplayed
    case linesDroppedHeldAtExit
    case routingUpdates
    case datagramsDroppedAtExit
    case linesUnconfirmedAtExit

    /// The counter's name in lowercase dot notation.
    public var name: String {
        switch self {
        case .datagramsReceived: "statsrelay.datagrams_received"
        case .bytesReceived: "statsrelay.bytes_received"
        case .linesReceived: "statsrelay.lines_received"
        case .linesForwarded: "statsrelay.lines_forwarded"
        case .emptyLines: "statsrelay.lines_empty"
        case .linesDroppedMissingColon: "statsrelay.lines_dropped.missing_colon"
        case .linesDroppedEmptyName: "statsrelay.lines_dropped.empty_name"
        case .linesDroppedNulByte: "statsrelay.lines_dropped.nul_byte"
        case .linesDroppedNoSendBuffer: "statsrelay.lines_dropped.no_send_buffer"
        case .datagramsTruncated: "statsrelay.datagrams_dropped.truncated"
        case .datagramsMalformedHeader: "statsrelay.datagrams_dropped.bad_receive_header"
        case .bufferRingExhausted: "statsrelay.buffer_ring_exhausted"
        case .receiveRearms: "statsrelay.receive_rearms"
        case .receiveErrors: "statsrelay.receive_errors"
        case .packetsSent: "statsrelay.packets_sent"
        case .sendErrors: "statsrelay.send_errors"
        case .linesDroppedSendError: "statsrelay.lines_dropped.send_error"
        case .linesRehashed: "statsrelay.lines_rehashed"
        case .linesDroppedBackendDown: "statsrelay.lines_dropped.backend_down"
        case .linesHeld: "statsrelay.lines_held"
        case .linesDroppedHoldOverflow: "statsrelay.lines_dropped.hold_overflow"
        case .linesReplayed: "statsrelay.lines_replayed"
        case .linesDroppedHeldAtExit: "statsrelay.lines_dropped.held_at_exit"
        case .routingUpdates: "statsrelay.routing_updates"
        case .datagramsDroppedAtExit: "statsrelay.datagrams_dropped.at_exit"
        case .linesUnconfirmedAtExit: "statsrelay.lines_unconfirmed_at_exit"
        }
    }

    /// The counter for a malformed line.
    @inline(__always)
    public static func dropped(_ reason: LineScanner.Malformation) -> RelayCounter {
        switch reason {
        case .missingColon: .linesDroppedMissingColon
        case .emptyName: .linesDroppedEmptyName
        case .nulByte: .linesDroppedNulByte
        }
    }
}

/// Counters kept per backend, in the same table style.
public enum BackendCounter: Int, CaseIterable, Sendable {
    case linesSent
    case packetsSent
    case bytesSent
    case sendErrors
    case sendRefused
    case linesDroppedSendError
    case linesRehashedAway
    case linesDroppedBackendDown
    case linesHeld
    case linesDroppedHoldOverflow
    case linesReplayed

    /// The counter's name; the backend is a label.
    public var name: String {
        switch self {
        case .linesSent: "statsrelay.backend.lines_sent"
        case .packetsSent: "statsrelay.backend.packets_sent"
        case .bytesSent: "statsrelay.backend.bytes_sent"
        case .sendErrors: "statsrelay.backend.send_errors"
        case .sendRefused: "statsrelay.backend.send_refused"
        case .linesDroppedSendError: "statsrelay.backend.lines_dropped.send_error"
        case .linesRehashedAway: "statsrelay.backend.lines_rehashed_away"
        case .linesDroppedBackendDown: "statsrelay.backend.lines_dropped.backend_down"
        case .linesHeld: "statsrelay.backend.lines_held"
        case .linesDroppedHoldOverflow: "statsrelay.backend.lines_dropped.hold_overflow"
        case .linesReplayed: "statsrelay.backend.lines_replayed"
        }
    }
}

/// One worker's counters (or the sum of several): plain integers, written only by the worker
/// that owns them, so the per-datagram path takes no lock and no atomic.
public struct RelayCounters: Sendable, Equatable {
    /// Room for every `RelayCounter`, stored inline: the per-line increments are plain stores,
    /// with none of an `Array`'s copy-on-write uniqueness checks.
    private var relay = InlineArray<32, UInt64>(repeating: 0)
    private var backend: [UInt64]
    /// How many backends are counted.
    public let backendCount: Int

    /// All zeros for `backendCount` backends.
    public init(backendCount: Int) {
        precondition(RelayCounter.allCases.count <= 32, "RelayCounters.relay needs more room")
        self.backendCount = backendCount
        backend = Array(repeating: 0, count: BackendCounter.allCases.count * backendCount)
    }

    /// Whether both hold the same counts.
    public static func == (lhs: RelayCounters, rhs: RelayCounters) -> Bool {
        lhs.backendCount == rhs.backendCount && lhs.backend == rhs.backend
            && lhs.relay.indices.allSatisfy { lhs.relay[$0] == rhs.relay[$0] }
    }

    /// A relay-wide counter.
    @inline(__always)
    public subscript(_ counter: RelayCounter) -> UInt64 {
        get { relay[counter.rawValue] }
        set { relay[counter.rawValue] = newValue }
    }

    /// A per-backend counter.
    @inline(__always)
    public subscript(_ counter: BackendCounter, backend index: Int) -> UInt64 {
        get { backend[index * BackendCounter.allCases.count + counter.rawValue] }
        set { backend[index * BackendCounter.allCases.count + counter.rawValue] = newValue }
    }

    /// Adds another worker's counters to these.
    public static func += (lhs: inout RelayCounters, rhs: RelayCounters) {
        precondition(lhs.backendCount == rhs.backendCount)
        for index in lhs.relay.indices { lhs.relay[index] &+= rhs.relay[index] }
        for index in lhs.backend.indices { lhs.backend[index] &+= rhs.backend[index] }
    }

    /// Every counter as `name value` lines, backends labelled with their names.
    public func report(backendNames: [String]) -> String {
        var lines: [String] = []
        for counter in RelayCounter.allCases { lines.append("\(counter.name) \(self[counter])") }
        for (index, name) in backendNames.enumerated() where index < backendCount {
            for counter in BackendCounter.allCases {
                lines.append("\(counter.name){backend=\"\(name)\"} \(self[counter, backend: index])")
            }
        }
        return lines.joined(separator: "\n")
    }
}
