import BasicContainers
import RelayKernel

/// The parts of a worker's start-up both drivers share.
enum WorkerSetup {
    /// Binds every listener of `settings` with `SO_REUSEPORT` (other workers join the same
    /// addresses), in listener-id order.
    static func listeners(_ settings: WorkerSettings) throws(SystemCallError) -> UniqueArray<UDPSocket> {
        var listeners = UniqueArray<UDPSocket>(minimumCapacity: settings.listeners.count)
        for address in settings.listeners {
            let socket = try UDPSocket.bound(to: address, reusePort: true, receiveBufferBytes: settings.receiveBufferBytes)
            if let spread = settings.reusePortSpread { try socket.spreadReusePortGroup(over: spread) }
            listeners.append(socket)
        }
        return listeners
    }

    /// Closes every listener once receiving has stopped: what each still holds (it arrived after
    /// the drain ended) is taken and counted as dropped at exit, and closing hands the port's
    /// traffic to any other `SO_REUSEPORT` socket still receiving, instead of letting it queue
    /// unseen until the process exits.
    ///
    /// Each listener first stops taking new datagrams (`UDPSocket.refuseNewDatagrams`), so what
    /// it holds is a fixed number, bounded by its receive buffer, that a client still sending
    /// cannot grow. Counting them takes time in proportion to it (some 5 000 datagrams a
    /// millisecond), so it gets half of what is left of the stop budget, and at least
    /// `minimumDiscardNanoseconds` when the budget is spent; a listener that still holds
    /// datagrams after that closes with them uncounted, and is counted in
    /// `listeners_closed_uncounted`.
    static func closeListeners(_ listeners: inout UniqueArray<UDPSocket>, core: inout RelayCore) {
        for index in listeners.indices {
            // Should connect(2) fail, the count below is still bounded by its deadline.
            try? listeners[index].refuseNewDatagrams()
        }
        let now = MonotonicClock.nanoseconds()
        let half = core.stopDeadline > now ? (core.stopDeadline - now) / 2 : 0
        let deadline = now + max(half, minimumDiscardNanoseconds)
        var discarded = 0
        var uncounted = 0
        for index in listeners.indices {
            discarded += listeners[index].discardPending(deadline: deadline)
            if listeners[index].hasPendingDatagram { uncounted += 1 }
        }
        core.countDiscardedAtStop(discarded, listenersLeftUncounted: uncounted)
        listeners.removeAll()
    }

    /// The least time `closeListeners` spends counting what the listeners hold: a full 64 MiB
    /// receive buffer of small datagrams (about 80 000) takes some 15 ms.
    static let minimumDiscardNanoseconds: UInt64 = 50_000_000

    /// The `listener` label of a UDP listener bound to `address`.
    static func label(_ address: SocketAddress) -> String { "udp:\(address)" }
}
