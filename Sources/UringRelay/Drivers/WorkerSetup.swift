import BasicContainers
import Glibc
import RelayKernel

/// The parts of a worker's start-up both drivers share.
enum WorkerSetup {
    /// Binds every listener of `settings` with `SO_REUSEPORT` (other workers join the same
    /// addresses), in listener-id order; or, for a relay that took over from another process,
    /// opens a duplicate of the socket this worker inherited for each (`WorkerHandOver`), with
    /// no bind: a fresh socket beside it would join the port's group and take a share of the
    /// traffic. Each socket's copy goes to the registry, for the next takeover.
    static func listeners(_ settings: WorkerSettings) throws(SystemCallError) -> UniqueArray<UDPSocket> {
        var listeners = UniqueArray<UDPSocket>(minimumCapacity: settings.listeners.count)
        for (index, address) in settings.listeners.enumerated() {
            let socket: UDPSocket
            if let handOver = settings.handOver, let inherited = handOver.inherited {
                socket = try inherited[index].socket.duplicate()
                // The group's program, if any, came with it: this relay's --reuseport-steering
                // replaces it (one program per group, so worker 0 sets it for all). A socket
                // every worker reads (a Unix listener's included) is in no group.
                let shared = index < handOver.sharedByWorkers.count && handOver.sharedByWorkers[index]
                if !shared && address.family != .unix {
                    if handOver.worker == 0 {
                        if let spread = settings.reusePortSpread { try socket.spreadReusePortGroup(over: spread) } else { try socket.hashReusePortGroup() }
                    }
                    // Each socket's CPU is its own: every worker sets (or clears) its own.
                    try socket.preferIncomingCPU(settings.incomingCPU)
                }
            } else if let shared = settings.handOver?.shared[index] {
                // A Unix datagram listener: bound once by the relay, read by every worker.
                socket = try shared.socket.duplicate()
            } else if address.family == .unix {
                throw SystemCallError("bind unix", address.host, Errno(rawValue: EINVAL), hint: "a Unix listener is bound by the relay, not by a worker")
            } else {
                socket = try UDPSocket.bound(to: address, reusePort: true, receiveBufferBytes: settings.receiveBufferBytes)
                if let spread = settings.reusePortSpread { try socket.spreadReusePortGroup(over: spread) }
                if let cpu = settings.incomingCPU { try socket.preferIncomingCPU(cpu) }
            }
            if let handOver = settings.handOver, handOver.registry.keepsCopies {
                handOver.registry.keep(SocketBox(try socket.duplicate()), listener: UInt32(index), worker: handOver.worker)
            }
            listeners.append(socket)
        }
        return listeners
    }

    /// The kernel drop counter each listener starts from (`WorkerListeners`): for an inherited
    /// socket, where the previous process stopped counting (it says so from protocol version 2
    /// on), else its value now; 0 for one this worker bound; `nil` (not counted) for a socket
    /// every worker reads, but in worker 0.
    static func dropBaselines(_ listeners: borrowing UniqueArray<UDPSocket>, settings: WorkerSettings) -> [UInt32?] {
        var baselines: [UInt32?] = []
        let handOver = settings.handOver
        for index in listeners.indices {
            guard let handOver, handOver.inherited != nil else {
                // A socket every worker reads (a Unix listener) is counted by worker 0 alone.
                let shared = handOver?.shared[index] != nil
                baselines.append(shared && handOver?.worker != 0 ? nil : 0)
                continue
            }
            // Every worker reads one socket of a Unix listener, handed over or not.
            let shared = (index < handOver.sharedByWorkers.count && handOver.sharedByWorkers[index])
                || (index < settings.listeners.count && settings.listeners[index].family == .unix)
            if shared && handOver.worker != 0 {
                baselines.append(nil)
            } else if let given = handOver.inheritedDropBaselines, index < given.count, let baseline = given[index] {
                baselines.append(baseline)
            } else {
                baselines.append(listeners[index].kernelDrops ?? 0)
            }
        }
        return baselines
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
    ///
    /// When another process shares the sockets (`ListenerRegistry.listenersShared`: a takeover),
    /// they close as they are: connecting one to itself would refuse the datagrams the other
    /// process is there to take, and what it holds is that process's to relay.
    static func closeListeners(_ listeners: inout UniqueArray<UDPSocket>, core: inout RelayCore) {
        if core.settings.handOver?.registry.listenersShared == true {
            listeners.removeAll()
            return
        }
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

    /// The `listener` label of a listener bound to `address`: `udp:ADDR:PORT`, or
    /// `unixgram:PATH` for a Unix datagram listener.
    static func label(_ address: SocketAddress) -> String {
        address.family == .unix ? "unixgram:\(address.host)" : "udp:\(address)"
    }
}
