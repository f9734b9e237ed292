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
    case linesDroppedTooLong
    case linesDroppedNoSendBuffer
    case datagramsTruncated
    case datagramsMalformedHeader
    case bufferRingExhausted
    case receiveRearms
    case receiveErrors
    case submissionsDeferred
    case packetsSent
    case sendErrors
    case linesDroppedSendError
    case linesRehashed
    case linesDroppedBackendDown
    case linesFailOpen
    case linesHeld
    case linesDroppedHoldOverflow
    case linesReplayed
    case linesDroppedHeldAtExit
    case routingUpdates
    case datagramsDroppedAtExit
    case listenersClosedUncounted
    case linesUnconfirmedAtExit
    case linesDoubted
    case linesDroppedUnsentAtExit
    case linesInFlightAtExit
    case poolChanges
    case poolChangesFailed
    case linesDroppedBackendRemoved
    case linesDroppedRefused
    case linesDroppedUnreachable
    case datagramsDroppedKernel
    case linesDroppedBadEventHeader
    case linesDroppedBadName
    case linesDroppedBadValue
    case linesDroppedBadType
    case linesDroppedBadSampleRate
    case linesDroppedBadTimestamp
    case linesDroppedBadServiceCheck
    case linesDroppedTooLongRewritten
    case linesDroppedTCPQueueFull
    case linesDroppedTCPUnsentAtExit
    case mirrorLines
    case mirrorLinesDroppedNoSendBuffer
    case mirrorLinesSent
    case mirrorPacketsSent
    case mirrorBytesSent
    case mirrorSendRetries
    case mirrorLinesDroppedSendError
    case mirrorLinesDroppedRefused
    case mirrorLinesDroppedUnreachable
    case mirrorLinesDroppedUnsentAtExit
    case mirrorLinesDoubted
    case mirrorLinesUnconfirmedAtExit
    case mirrorLinesInFlightAtExit
    case mirrorLinesDroppedTCPQueueFull
    case mirrorLinesDroppedTCPUnsentAtExit
    case mirrorTCPLinesLostAtReset
    case mirrorTCPConnectionFailures
    case tcpConnectionsAccepted
    case tcpConnectionsRefused
    case tcpConnectionsClosedPeer
    case tcpConnectionsClosedIdle
    case tcpConnectionsClosedTooLong
    case tcpConnectionsClosedError
    case tcpConnectionsClosedStop
    case tcpAcceptErrors
    case linesDroppedTCPPartial
    case tcpBytesDroppedPartial
    case tcpBytesDroppedTooLong
    case tcpBytesDroppedUnread
    case tcpReceiveCompletions
    case tcpReceiveBuffers
    case tcpBufferRingExhausted

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
        case .linesDroppedTooLong: "statsrelay.lines_dropped.too_long"
        case .linesDroppedNoSendBuffer: "statsrelay.lines_dropped.no_send_buffer"
        case .datagramsTruncated: "statsrelay.datagrams_dropped.truncated"
        case .datagramsMalformedHeader: "statsrelay.datagrams_dropped.bad_receive_header"
        case .bufferRingExhausted: "statsrelay.buffer_ring_exhausted"
        case .receiveRearms: "statsrelay.receive_rearms"
        case .receiveErrors: "statsrelay.receive_errors"
        case .submissionsDeferred: "statsrelay.submissions_deferred"
        case .packetsSent: "statsrelay.packets_sent"
        case .sendErrors: "statsrelay.send_errors"
        case .linesDroppedSendError: "statsrelay.lines_dropped.send_error"
        case .linesRehashed: "statsrelay.lines_rehashed"
        case .linesDroppedBackendDown: "statsrelay.lines_dropped.backend_down"
        case .linesFailOpen: "statsrelay.lines_fail_open"
        case .linesHeld: "statsrelay.lines_held"
        case .linesDroppedHoldOverflow: "statsrelay.lines_dropped.hold_overflow"
        case .linesReplayed: "statsrelay.lines_replayed"
        case .linesDroppedHeldAtExit: "statsrelay.lines_dropped.held_at_exit"
        case .routingUpdates: "statsrelay.routing_updates"
        case .datagramsDroppedAtExit: "statsrelay.datagrams_dropped.at_exit"
        case .listenersClosedUncounted: "statsrelay.listeners_closed_uncounted"
        case .linesUnconfirmedAtExit: "statsrelay.lines_unconfirmed_at_exit"
        case .linesDoubted: "statsrelay.lines_doubted"
        case .linesDroppedUnsentAtExit: "statsrelay.lines_dropped.unsent_at_exit"
        case .linesInFlightAtExit: "statsrelay.lines_in_flight_at_exit"
        case .poolChanges: "statsrelay.pool_changes"
        case .poolChangesFailed: "statsrelay.pool_changes_failed"
        case .linesDroppedBackendRemoved: "statsrelay.lines_dropped.backend_removed"
        case .linesDroppedRefused: "statsrelay.lines_dropped.refused"
        case .linesDroppedUnreachable: "statsrelay.lines_dropped.unreachable"
        case .datagramsDroppedKernel: "statsrelay.datagrams_dropped.kernel"
        case .linesDroppedBadEventHeader: "statsrelay.lines_dropped.bad_event_header"
        case .linesDroppedBadName: "statsrelay.lines_dropped.bad_name"
        case .linesDroppedBadValue: "statsrelay.lines_dropped.bad_value"
        case .linesDroppedBadType: "statsrelay.lines_dropped.bad_type"
        case .linesDroppedBadSampleRate: "statsrelay.lines_dropped.bad_sample_rate"
        case .linesDroppedBadTimestamp: "statsrelay.lines_dropped.bad_timestamp"
        case .linesDroppedBadServiceCheck: "statsrelay.lines_dropped.bad_service_check"
        case .linesDroppedTooLongRewritten: "statsrelay.lines_dropped.too_long_rewritten"
        case .linesDroppedTCPQueueFull: "statsrelay.lines_dropped.tcp_queue_full"
        case .linesDroppedTCPUnsentAtExit: "statsrelay.lines_dropped.tcp_unsent_at_exit"
        case .mirrorLines: "statsrelay.mirror.lines_mirrored"
        case .mirrorLinesDroppedNoSendBuffer: "statsrelay.mirror.lines_dropped.no_send_buffer"
        case .mirrorLinesSent: "statsrelay.mirror.lines_sent"
        case .mirrorPacketsSent: "statsrelay.mirror.packets_sent"
        case .mirrorBytesSent: "statsrelay.mirror.bytes_sent"
        case .mirrorSendRetries: "statsrelay.mirror.send_retries"
        case .mirrorLinesDroppedSendError: "statsrelay.mirror.lines_dropped.send_error"
        case .mirrorLinesDroppedRefused: "statsrelay.mirror.lines_dropped.refused"
        case .mirrorLinesDroppedUnreachable: "statsrelay.mirror.lines_dropped.unreachable"
        case .mirrorLinesDroppedUnsentAtExit: "statsrelay.mirror.lines_dropped.unsent_at_exit"
        case .mirrorLinesDoubted: "statsrelay.mirror.lines_doubted"
        case .mirrorLinesUnconfirmedAtExit: "statsrelay.mirror.lines_unconfirmed_at_exit"
        case .mirrorLinesInFlightAtExit: "statsrelay.mirror.lines_in_flight_at_exit"
        case .mirrorLinesDroppedTCPQueueFull: "statsrelay.mirror.lines_dropped.tcp_queue_full"
        case .mirrorLinesDroppedTCPUnsentAtExit: "statsrelay.mirror.lines_dropped.tcp_unsent_at_exit"
        case .mirrorTCPLinesLostAtReset: "statsrelay.mirror.tcp_lines_lost_at_reset"
        case .mirrorTCPConnectionFailures: "statsrelay.mirror.tcp_connection_failures"
        case .tcpConnectionsAccepted: "statsrelay.tcp_connections_accepted"
        case .tcpConnectionsRefused: "statsrelay.tcp_connections_refused"
        case .tcpConnectionsClosedPeer: "statsrelay.tcp_connections_closed.peer"
        case .tcpConnectionsClosedIdle: "statsrelay.tcp_connections_closed.idle"
        case .tcpConnectionsClosedTooLong: "statsrelay.tcp_connections_closed.too_long"
        case .tcpConnectionsClosedError: "statsrelay.tcp_connections_closed.error"
        case .tcpConnectionsClosedStop: "statsrelay.tcp_connections_closed.stop"
        case .tcpAcceptErrors: "statsrelay.tcp_accept_errors"
        case .linesDroppedTCPPartial: "statsrelay.lines_dropped.tcp_partial"
        case .tcpBytesDroppedPartial: "statsrelay.tcp_bytes_dropped.partial"
        case .tcpBytesDroppedTooLong: "statsrelay.tcp_bytes_dropped.too_long"
        case .tcpBytesDroppedUnread: "statsrelay.tcp_bytes_dropped.unread"
        case .tcpReceiveCompletions: "statsrelay.tcp_receive_completions"
        case .tcpReceiveBuffers: "statsrelay.tcp_receive_buffers"
        case .tcpBufferRingExhausted: "statsrelay.tcp_buffer_ring_exhausted"
        }
    }

    /// The per-backend counter this relay-wide one adds up, if any. Such a total is never
    /// incremented on its own: it is the sum of its backends' counts (current and retired)
    /// plus anything counted for no backend, so a total and its parts can never disagree.
    /// Inlined so the per-line increments of a constant counter fold it away (called out of
    /// line, it cost some 8 instructions a line).
    @inline(__always)
    public var backendColumn: BackendCounter? {
        switch self {
        case .packetsSent: .packetsSent
        case .sendErrors: .sendErrors
        case .linesDroppedSendError: .linesDroppedSendError
        case .linesRehashed: .linesRehashedAway
        case .linesDroppedBackendDown: .linesDroppedBackendDown
        case .linesHeld: .linesHeld
        case .linesDroppedHoldOverflow: .linesDroppedHoldOverflow
        case .linesReplayed: .linesReplayed
        case .linesDroppedRefused: .linesRefused
        case .linesDroppedUnreachable: .linesUnreachable
        case .linesUnconfirmedAtExit: .linesUnconfirmedAtExit
        case .linesDoubted: .linesDoubted
        case .linesDroppedTCPQueueFull: .linesDroppedTCPQueueFull
        case .linesDroppedTCPUnsentAtExit: .linesDroppedTCPUnsentAtExit
        default: nil
        }
    }

    /// The counter for a malformed line.
    @inline(__always)
    public static func dropped(_ reason: LineScanner.Malformation) -> RelayCounter {
        switch reason {
        case .missingColon: .linesDroppedMissingColon
        case .emptyName: .linesDroppedEmptyName
        case .nulByte: .linesDroppedNulByte
        case .tooLong: .linesDroppedTooLong
        case .badEventHeader: .linesDroppedBadEventHeader
        case .badName: .linesDroppedBadName
        case .badValue: .linesDroppedBadValue
        case .badType: .linesDroppedBadType
        case .badSampleRate: .linesDroppedBadSampleRate
        case .badTimestamp: .linesDroppedBadTimestamp
        case .badServiceCheck: .linesDroppedBadServiceCheck
        case .tooLongRewritten: .linesDroppedTooLongRewritten
        }
    }
}

/// Counters kept per backend, in the same table style.
public enum BackendCounter: Int, CaseIterable, Sendable {
    case linesSent
    case packetsSent
    case bytesSent
    case sendErrors
    case sendRetries
    case linesDroppedSendError
    case linesRehashedAway
    case linesDroppedBackendDown
    case linesHeld
    case linesDroppedHoldOverflow
    case linesReplayed
    case packetsRefused
    case linesRefused
    case linesUnreachable
    case linesDoubted
    case linesUnconfirmedAtExit
    case unattributedLosses
    case linesDroppedTCPQueueFull
    case bytesDroppedTCPQueueFull
    case linesDroppedTCPUnsentAtExit
    case bytesDroppedTCPUnsentAtExit
    case tcpLinesLostAtReset
    case tcpBytesLostAtReset
    case tcpConnects
    case tcpConnectionFailures
    case tcpBytesReceived

    /// The counter's name; the backend is a label.
    public var name: String {
        switch self {
        case .linesSent: "statsrelay.backend.lines_sent"
        case .packetsSent: "statsrelay.backend.packets_sent"
        case .bytesSent: "statsrelay.backend.bytes_sent"
        case .sendErrors: "statsrelay.backend.send_errors"
        case .sendRetries: "statsrelay.backend.send_retries"
        case .linesDroppedSendError: "statsrelay.backend.lines_dropped.send_error"
        case .linesRehashedAway: "statsrelay.backend.lines_rehashed_away"
        case .linesDroppedBackendDown: "statsrelay.backend.lines_dropped.backend_down"
        case .linesHeld: "statsrelay.backend.lines_held"
        case .linesDroppedHoldOverflow: "statsrelay.backend.lines_dropped.hold_overflow"
        case .linesReplayed: "statsrelay.backend.lines_replayed"
        case .packetsRefused: "statsrelay.backend.packets_refused"
        case .linesRefused: "statsrelay.backend.lines_dropped.refused"
        case .linesUnreachable: "statsrelay.backend.lines_dropped.unreachable"
        case .linesDoubted: "statsrelay.backend.lines_doubted"
        case .linesUnconfirmedAtExit: "statsrelay.backend.lines_unconfirmed_at_exit"
        case .unattributedLosses: "statsrelay.backend.unattributed_losses"
        case .linesDroppedTCPQueueFull: "statsrelay.backend.lines_dropped.tcp_queue_full"
        case .bytesDroppedTCPQueueFull: "statsrelay.backend.bytes_dropped.tcp_queue_full"
        case .linesDroppedTCPUnsentAtExit: "statsrelay.backend.lines_dropped.tcp_unsent_at_exit"
        case .bytesDroppedTCPUnsentAtExit: "statsrelay.backend.bytes_dropped.tcp_unsent_at_exit"
        case .tcpLinesLostAtReset: "statsrelay.backend.tcp_lines_lost_at_reset"
        case .tcpBytesLostAtReset: "statsrelay.backend.tcp_bytes_lost_at_reset"
        case .tcpConnects: "statsrelay.backend.tcp_connects"
        case .tcpConnectionFailures: "statsrelay.backend.tcp_connection_failures"
        case .tcpBytesReceived: "statsrelay.backend.tcp_bytes_received"
        }
    }
}

/// One worker's counters (or the sum of several): plain integers, written only by the worker
/// that owns them, so the per-datagram path takes no lock and no atomic.
///
/// Per-backend counters are keyed by the backend's identity (`host:port[:instance]` as the
/// operator wrote it), not by its position: when the backend pool changes, a backend that stays
/// keeps its counters at its new position, and a removed backend's counters are kept aside
/// (`retired`) so that nothing counted is ever lost from the report.
public struct RelayCounters: Sendable, Equatable {
    /// Room for every `RelayCounter`, stored inline: the per-line increments are plain stores,
    /// with none of an `Array`'s copy-on-write uniqueness checks.
    private var relay = InlineArray<96, UInt64>(repeating: 0)
    private var backend: [UInt64]
    /// The identities of the backends counted by position, in pool order.
    public private(set) var backends: [String]
    /// Counters of backends no longer in the pool, by identity, in the order they left.
    private var retired: [(backend: String, values: [UInt64])] = []
    /// The listeners counted apart (their `listener` label, e.g. `udp:127.0.0.1:8125`), and per
    /// listener, at `index * ListenerCounter.allCases.count`, its `ListenerCounter`s.
    public private(set) var listeners: [String] = []
    /// Read and written through `self[_:listener:]` (`RelayCounters+Listeners.swift`).
    var listenerValues: [UInt64] = []
    /// The mirror pool's backends counted apart (as written, without `mirror/`), and per mirror
    /// backend, at `index * MirrorBackendCounter.allCases.count`, its `MirrorBackendCounter`s
    /// (`RelayCounters+Mirror.swift`).
    public internal(set) var mirrorBackends: [String] = []
    var mirrorValues: [UInt64] = []

    /// Starts counting listener `name`, from zero, after the ones counted.
    mutating func appendListener(_ name: String) {
        listeners.append(name)
        listenerValues.append(contentsOf: repeatElement(0, count: ListenerCounter.allCases.count))
    }

    /// How many backends are counted by position.
    public var backendCount: Int { backends.count }

    /// Every backend counted: those in the pool in pool order, then those that left it.
    public var countedBackends: [String] { backends + retired.map(\.backend) }

    /// All zeros for these backends (identities in pool order).
    public init(backends: [String]) {
        precondition(RelayCounter.allCases.count <= 96, "RelayCounters.relay needs more room")
        self.backends = backends
        backend = Array(repeating: 0, count: BackendCounter.allCases.count * backends.count)
    }

    /// All zeros for `backendCount` backends named by their position (`#0`, `#1`, …).
    public init(backendCount: Int) {
        self.init(backends: (0..<backendCount).map { "#\($0)" })
    }

    /// Whether both hold the same counts for the same backends.
    public static func == (lhs: RelayCounters, rhs: RelayCounters) -> Bool {
        lhs.backends == rhs.backends && lhs.backend == rhs.backend
            && lhs.listeners == rhs.listeners && lhs.listenerValues == rhs.listenerValues
            && lhs.mirrorBackends == rhs.mirrorBackends && lhs.mirrorValues == rhs.mirrorValues
            && lhs.retired.map(\.backend) == rhs.retired.map(\.backend)
            && lhs.retired.map(\.values) == rhs.retired.map(\.values)
            && lhs.relay.indices.allSatisfy { lhs.relay[$0] == rhs.relay[$0] }
    }

    /// A relay-wide counter; for a total of a per-backend counter (`backendColumn`), the sum of
    /// its backends' counts (keep such totals off the per-line path).
    @inline(__always)
    public subscript(_ counter: RelayCounter) -> UInt64 {
        get {
            guard let column = counter.backendColumn else { return relay[counter.rawValue] }
            return relay[counter.rawValue] &+ total(column)
        }
        set {
            guard let column = counter.backendColumn else {
                relay[counter.rawValue] = newValue
                return
            }
            relay[counter.rawValue] = newValue &- total(column)
        }
    }

    /// The sum of a per-backend counter over every backend, current or retired.
    public func total(_ counter: BackendCounter) -> UInt64 {
        let width = BackendCounter.allCases.count
        var sum: UInt64 = 0
        var index = counter.rawValue
        while index < backend.count {
            sum &+= backend[index]
            index += width
        }
        for entry in retired { sum &+= entry.values[counter.rawValue] }
        return sum
    }

    /// Adds to a per-backend counter by identity, whether the backend is in the pool or has left
    /// it (for outcomes that arrive after a pool change).
    public mutating func add(_ value: UInt64, to counter: BackendCounter, backend identity: String) {
        guard value > 0 else { return }
        if let index = backends.firstIndex(of: identity) {
            self[counter, backend: index] &+= value
            return
        }
        var values = Array(repeating: UInt64(0), count: BackendCounter.allCases.count)
        values[counter.rawValue] = value
        retire(identity, values)
    }

    /// A per-backend counter for every backend counted, current or retired, by identity.
    public func values(of counter: BackendCounter) -> [(backend: String, value: UInt64)] {
        backends.indices.map { (backends[$0], self[counter, backend: $0]) }
            + retired.map { ($0.backend, $0.values[counter.rawValue]) }
    }

    /// A per-backend counter, by the backend's position in the current pool.
    @inline(__always)
    public subscript(_ counter: BackendCounter, backend index: Int) -> UInt64 {
        get { backend[index * BackendCounter.allCases.count + counter.rawValue] }
        set { backend[index * BackendCounter.allCases.count + counter.rawValue] = newValue }
    }

    /// A per-backend counter by identity, whether the backend is in the pool or has left it.
    public subscript(_ counter: BackendCounter, backend identity: String) -> UInt64 {
        if let index = backends.firstIndex(of: identity) { return self[counter, backend: index] }
        return retired.first { $0.backend == identity }.map { $0.values[counter.rawValue] } ?? 0
    }

    /// Moves per-backend counters to a new pool's order: a backend in both keeps its counts at
    /// its new position, a new one starts at zero, a removed one is retired (still reported).
    public mutating func rekey(to newBackends: [String]) {
        let width = BackendCounter.allCases.count
        var moved = Array(repeating: UInt64(0), count: width * newBackends.count)
        var position: [String: Int] = [:]
        for (index, name) in newBackends.enumerated() { position[name] = index }
        for (old, name) in backends.enumerated() {
            let values = Array(backend[old * width..<(old + 1) * width])
            if let new = position[name] {
                moved.replaceSubrange(new * width..<(new + 1) * width, with: values)
            } else {
                retire(name, values)
            }
        }
        // A backend that comes back takes its retired counts with it.
        for (new, name) in newBackends.enumerated() {
            if let index = retired.firstIndex(where: { $0.backend == name }) {
                for offset in 0..<width { moved[new * width + offset] &+= retired[index].values[offset] }
                retired.remove(at: index)
            }
        }
        backends = newBackends
        backend = moved
    }

    private mutating func retire(_ name: String, _ values: [UInt64]) {
        if let index = retired.firstIndex(where: { $0.backend == name }) {
            for offset in values.indices { retired[index].values[offset] &+= values[offset] }
        } else {
            retired.append((name, values))
        }
    }

    /// Adds another worker's counters to these, backend by backend identity (the other's
    /// backends that these lack are added at the end, or to the retired ones).
    public static func += (lhs: inout RelayCounters, rhs: RelayCounters) {
        for index in lhs.relay.indices { lhs.relay[index] &+= rhs.relay[index] }
        for (other, name) in rhs.listeners.enumerated() {
            let index = lhs.countListener(name)
            for counter in ListenerCounter.allCases {
                lhs[counter, listener: index] &+= rhs[counter, listener: other]
            }
        }
        lhs.addMirrorBackends(of: rhs)
        let width = BackendCounter.allCases.count
        if lhs.backends == rhs.backends {
            for index in lhs.backend.indices { lhs.backend[index] &+= rhs.backend[index] }
        } else {
            for (other, name) in rhs.backends.enumerated() {
                let values = Array(rhs.backend[other * width..<(other + 1) * width])
                if let index = lhs.backends.firstIndex(of: name) {
                    for offset in 0..<width { lhs.backend[index * width + offset] &+= values[offset] }
                } else {
                    // In the pool for the other worker: counts kept as retired here join it.
                    var merged = values
                    if let retiredIndex = lhs.retired.firstIndex(where: { $0.backend == name }) {
                        for offset in 0..<width { merged[offset] &+= lhs.retired[retiredIndex].values[offset] }
                        lhs.retired.remove(at: retiredIndex)
                    }
                    lhs.backends.append(name)
                    lhs.backend.append(contentsOf: merged)
                }
            }
        }
        for entry in rhs.retired {
            if let index = lhs.backends.firstIndex(of: entry.backend) {
                for offset in 0..<width { lhs.backend[index * width + offset] &+= entry.values[offset] }
            } else {
                lhs.retire(entry.backend, entry.values)
            }
        }
    }

    /// Every counter as `name value` lines, backends labelled with their identities (those that
    /// left the pool last). `backendNames`, if given, relabels the backends in the pool by position.
    public func report(backendNames: [String]? = nil) -> String {
        var lines: [String] = []
        for counter in RelayCounter.allCases { lines.append("\(counter.name) \(self[counter])") }
        var labelled: [(String, [UInt64])] = []
        let width = BackendCounter.allCases.count
        for (index, name) in backends.enumerated() {
            let label = backendNames.flatMap { index < $0.count ? $0[index] : nil } ?? name
            labelled.append((label, Array(backend[index * width..<(index + 1) * width])))
        }
        labelled += retired.map { ($0.backend, $0.values) }
        for (name, values) in labelled {
            for counter in BackendCounter.allCases {
                lines.append("\(counter.name){backend=\"\(name)\"} \(values[counter.rawValue])")
            }
        }
        for name in mirrorBackends {
            for counter in MirrorBackendCounter.allCases {
                lines.append("\(counter.name){backend=\"\(name)\"} \(self[counter, mirror: name])")
            }
        }
        return lines.joined(separator: "\n")
    }
}
