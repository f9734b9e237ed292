/// What is counted apart for each listener (the `listener` label of the received families and
/// of `datagrams_dropped{reason="kernel"}`).
public enum ListenerCounter: Int, CaseIterable, Sendable {
    /// Datagrams received on the listener (`RelayCounter.datagramsReceived`).
    case datagramsReceived
    /// Bytes of their payload (`RelayCounter.bytesReceived`).
    case bytesReceived
    /// Lines in them (`RelayCounter.linesReceived`).
    case linesReceived
    /// Datagrams the kernel dropped at the listener's sockets, their receive queues full
    /// (`RelayCounter.datagramsDroppedKernel`).
    case datagramsDroppedKernel
    /// TCP connections accepted and kept (`RelayCounter.tcpConnectionsAccepted`).
    case tcpConnectionsAccepted
    /// TCP connections accepted and reset at once, over `--tcp-max-connections`.
    case tcpConnectionsRefused
    /// TCP connections closed, by reason (`RelayCounter.tcpConnectionsClosed…`).
    case tcpConnectionsClosedPeer
    case tcpConnectionsClosedIdle
    case tcpConnectionsClosedTooLong
    case tcpConnectionsClosedError
    case tcpConnectionsClosedStop

    /// The relay-wide counter this one splits by listener.
    public var total: RelayCounter {
        switch self {
        case .datagramsReceived: .datagramsReceived
        case .bytesReceived: .bytesReceived
        case .linesReceived: .linesReceived
        case .datagramsDroppedKernel: .datagramsDroppedKernel
        case .tcpConnectionsAccepted: .tcpConnectionsAccepted
        case .tcpConnectionsRefused: .tcpConnectionsRefused
        case .tcpConnectionsClosedPeer: .tcpConnectionsClosedPeer
        case .tcpConnectionsClosedIdle: .tcpConnectionsClosedIdle
        case .tcpConnectionsClosedTooLong: .tcpConnectionsClosedTooLong
        case .tcpConnectionsClosedError: .tcpConnectionsClosedError
        case .tcpConnectionsClosedStop: .tcpConnectionsClosedStop
        }
    }

    /// Whether only TCP listeners (`tcp:…`) have this counter.
    public var isTCP: Bool { rawValue >= ListenerCounter.tcpConnectionsAccepted.rawValue }

    /// Why a TCP ingest connection closed, as its listener counter.
    public static let tcpCloseReasons: [ListenerCounter] = [
        .tcpConnectionsClosedPeer, .tcpConnectionsClosedIdle, .tcpConnectionsClosedTooLong, .tcpConnectionsClosedError,
        .tcpConnectionsClosedStop,
    ]

    /// The listener counter that splits `counter` by listener, if one does.
    public static func split(of counter: RelayCounter) -> ListenerCounter? {
        ListenerCounter.allCases.first { $0.total == counter }
    }
}

extension RelayCounters {
    /// A listener's counter, by its position in `listeners`.
    @inline(__always)
    public subscript(_ counter: ListenerCounter, listener index: Int) -> UInt64 {
        get { listenerValues[index * ListenerCounter.allCases.count + counter.rawValue] }
        set { listenerValues[index * ListenerCounter.allCases.count + counter.rawValue] = newValue }
    }

    /// Adds one receive's counts to listener `index`'s received counters: the array is checked
    /// for a unique owner once for the three (the subscript's setter checks at every store), on
    /// the per-datagram path.
    @inline(__always)
    public mutating func addReceived(listener index: Int, datagrams: UInt64, bytes: UInt64, lines: UInt64) {
        let base = index &* ListenerCounter.allCases.count
        var values = listenerValues.mutableSpan
        values[base &+ ListenerCounter.datagramsReceived.rawValue] &+= datagrams
        values[base &+ ListenerCounter.bytesReceived.rawValue] &+= bytes
        values[base &+ ListenerCounter.linesReceived.rawValue] &+= lines
    }

    /// A listener's counter by its label; 0 for a listener never counted.
    public subscript(_ counter: ListenerCounter, listener name: String) -> UInt64 {
        guard let index = listeners.firstIndex(of: name) else { return 0 }
        return self[counter, listener: index]
    }

    /// The position of listener `name` in `listeners`, which counts it from zero when it is new
    /// (at a worker's start or a reload, never per datagram).
    @discardableResult
    public mutating func countListener(_ name: String) -> Int {
        if let index = listeners.firstIndex(of: name) { return index }
        appendListener(name)
        return listeners.count - 1
    }
}
