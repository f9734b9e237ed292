import BasicContainers
import RelayKernel

/// The parts of a worker's start-up both drivers share.
enum WorkerSetup {
    /// Binds every listener of `settings` with `SO_REUSEPORT` (other workers join the same
    /// addresses), in listener-id order.
    static func listeners(_ settings: WorkerSettings) throws(SystemCallError) -> RigidArray<UDPSocket> {
        var listeners = RigidArray<UDPSocket>(capacity: settings.listeners.count)
        for address in settings.listeners {
            listeners.append(try UDPSocket.bound(to: address, reusePort: true, receiveBufferBytes: settings.receiveBufferBytes))
        }
        return listeners
    }

    /// An event signalled whenever a new backend pool is published.
    static func poolEvents(_ settings: WorkerSettings) throws(SystemCallError) -> WakeupEvent {
        do throws(Errno) { return try settings.routing.subscribe() } catch {
            throw SystemCallError("eventfd", "routing updates", error)
        }
    }

    /// The listeners' descriptors, in listener-id order (for `ppoll` and `recvmmsg`).
    static func descriptors(_ listeners: borrowing RigidArray<UDPSocket>) -> [Int32] {
        var descriptors: [Int32] = []
        for index in listeners.indices { descriptors.append(PollSet.descriptor(of: listeners[index])) }
        return descriptors
    }

    /// Closes every listener once receiving has stopped: what each still holds (it arrived after
    /// the drain ended) is taken and counted as dropped at exit, and closing hands the port's
    /// traffic to any other `SO_REUSEPORT` socket still receiving, instead of letting it queue
    /// unseen until the process exits.
    ///
    /// Taking them costs time in proportion to what a client sent, so it gets half of what is
    /// left of the stop budget, the other half staying for the final sends, and at least a
    /// millisecond (some 5 000 datagrams) when the budget is spent; what a socket still holds
    /// after that goes uncounted with it.
    static func closeListeners(_ listeners: inout RigidArray<UDPSocket>, core: inout RelayCore) {
        let now = MonotonicClock.nanoseconds()
        let half = core.stopDeadline > now ? (core.stopDeadline - now) / 2 : 0
        let deadline = now + max(half, minimumDiscardNanoseconds)
        var discarded = 0
        for index in listeners.indices { discarded += listeners[index].discardPending(deadline: deadline) }
        core.countDiscardedAtStop(discarded)
        listeners.removeAll()
    }

    /// The least time `closeListeners` spends counting what the listeners hold.
    static let minimumDiscardNanoseconds: UInt64 = 1_000_000

    /// The addresses the listeners are bound to (with the ports the kernel chose for port 0).
    static func boundAddresses(_ listeners: borrowing RigidArray<UDPSocket>) -> [SocketAddress] {
        var bound: [SocketAddress] = []
        for index in listeners.indices { bound.append(listeners[index].localAddress) }
        return bound
    }
}
