/// Counters kept per mirror backend (`--mirror`), beside the mirror pool's relay-wide
/// `statsrelay.mirror.*` ones: what each mirror backend was sent and what it lost. Each is
/// counted at the same place as its relay-wide counter (a drop on the line path, a delivery
/// report, the stop), so over the mirror backends they add up to it.
public enum MirrorBackendCounter: Int, CaseIterable, Sendable {
    case linesSent
    case packetsSent
    case bytesSent
    case linesDroppedNoSendBuffer
    case linesDroppedSendError
    case linesDroppedRefused
    case linesDroppedUnreachable
    case linesDroppedUnsentAtExit
    case linesDroppedTCPQueueFull
    case linesDroppedTCPUnsentAtExit

    /// The counter's name; the mirror backend is a label.
    public var name: String {
        switch self {
        case .linesSent: "statsrelay.mirror.backend.lines_sent"
        case .packetsSent: "statsrelay.mirror.backend.packets_sent"
        case .bytesSent: "statsrelay.mirror.backend.bytes_sent"
        case .linesDroppedNoSendBuffer: "statsrelay.mirror.backend.lines_dropped.no_send_buffer"
        case .linesDroppedSendError: "statsrelay.mirror.backend.lines_dropped.send_error"
        case .linesDroppedRefused: "statsrelay.mirror.backend.lines_dropped.refused"
        case .linesDroppedUnreachable: "statsrelay.mirror.backend.lines_dropped.unreachable"
        case .linesDroppedUnsentAtExit: "statsrelay.mirror.backend.lines_dropped.unsent_at_exit"
        case .linesDroppedTCPQueueFull: "statsrelay.mirror.backend.lines_dropped.tcp_queue_full"
        case .linesDroppedTCPUnsentAtExit: "statsrelay.mirror.backend.lines_dropped.tcp_unsent_at_exit"
        }
    }

    /// The relay-wide mirror counter this one splits by mirror backend.
    public var total: RelayCounter {
        switch self {
        case .linesSent: .mirrorLinesSent
        case .packetsSent: .mirrorPacketsSent
        case .bytesSent: .mirrorBytesSent
        case .linesDroppedNoSendBuffer: .mirrorLinesDroppedNoSendBuffer
        case .linesDroppedSendError: .mirrorLinesDroppedSendError
        case .linesDroppedRefused: .mirrorLinesDroppedRefused
        case .linesDroppedUnreachable: .mirrorLinesDroppedUnreachable
        case .linesDroppedUnsentAtExit: .mirrorLinesDroppedUnsentAtExit
        case .linesDroppedTCPQueueFull: .mirrorLinesDroppedTCPQueueFull
        case .linesDroppedTCPUnsentAtExit: .mirrorLinesDroppedTCPUnsentAtExit
        }
    }

    /// The Prometheus family and `reason` label this counter is exported under (with `backend`).
    public var exposition: (family: String, reason: String?) { Self.expositions[rawValue] }

    private static let expositions = MetricFamily.expositionTable(allCases.map { ($0.rawValue, $0.name) })
}

extension RelayCounters {
    /// Counts the mirror backends `names` (as written, in the mirror's routing order) from
    /// zero, once: the mirror is fixed for the process's life, so a worker's later processors
    /// (a primary pool change) find them counted already.
    mutating func countMirrorBackends(_ names: [String]) {
        guard mirrorBackends != names else { return }
        precondition(mirrorBackends.isEmpty, "the mirror pool is fixed for the process's life")
        mirrorBackends = names
        mirrorValues = Array(repeating: 0, count: names.count * MirrorBackendCounter.allCases.count)
    }

    /// A mirror backend's counter, by its position in the mirror pool.
    @inline(__always)
    public subscript(_ counter: MirrorBackendCounter, mirror index: Int) -> UInt64 {
        get { mirrorValues[index * MirrorBackendCounter.allCases.count + counter.rawValue] }
        set { mirrorValues[index * MirrorBackendCounter.allCases.count + counter.rawValue] = newValue }
    }

    /// A mirror backend's counter by its name as written; 0 for one never counted.
    public subscript(_ counter: MirrorBackendCounter, mirror name: String) -> UInt64 {
        guard let index = mirrorBackends.firstIndex(of: name) else { return 0 }
        return self[counter, mirror: index]
    }

    /// Adds to a mirror backend's counter by its identity as the sockets know it
    /// (`mirror/host:port`); nothing for one not counted.
    mutating func add(_ value: UInt64, to counter: MirrorBackendCounter, mirrorIdentity identity: String) {
        guard value > 0 else { return }
        let name = identity.dropFirst(MirrorPool.identityPrefix.count)
        guard let index = mirrorBackends.firstIndex(where: { $0 == name }) else { return }
        self[counter, mirror: index] &+= value
    }

    /// Adds `other`'s mirror backends' counts to these, by name (another worker's).
    mutating func addMirrorBackends(of other: RelayCounters) {
        guard !other.mirrorBackends.isEmpty else { return }
        if mirrorBackends.isEmpty { countMirrorBackends(other.mirrorBackends) }
        if mirrorBackends == other.mirrorBackends {
            for index in mirrorValues.indices { mirrorValues[index] &+= other.mirrorValues[index] }
            return
        }
        for (position, name) in other.mirrorBackends.enumerated() {
            let index: Int
            if let known = mirrorBackends.firstIndex(of: name) {
                index = known
            } else {
                mirrorBackends.append(name)
                mirrorValues.append(contentsOf: repeatElement(0, count: MirrorBackendCounter.allCases.count))
                index = mirrorBackends.count - 1
            }
            for counter in MirrorBackendCounter.allCases {
                self[counter, mirror: index] &+= other[counter, mirror: position]
            }
        }
    }
}
