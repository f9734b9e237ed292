import RelayKernel
import Synchronization

/// The relay's own copy of every listening socket, per listener id and worker, kept so that a
/// takeover (`ControlServer`) can pass them to the next process; and whether the listening
/// sockets are shared with another process.
///
/// A copy is a second descriptor of the worker's socket (`UDPSocket.duplicate`; for a TCP ingest
/// listener, of its listening socket, `TCPListenSocket.passable`): it adds no socket to the
/// port's `SO_REUSEPORT` group and takes no datagram or connection itself. The relay forgets a
/// listener's copies when a reload removes it (so that the socket can close) and all of them
/// once its workers have stopped.
public final class ListenerRegistry: Sendable {
    private let copies = Mutex<[UInt32: [Int: SocketBox]]>([:])
    private let shared = Atomic<Bool>(false)
    private let heldElsewhere = Atomic<Bool>(false)
    private let listenerSet = Mutex<ListenerSetUse?>(nil)
    private let dropLimits = Mutex<[UInt32: [Int: UInt32]]>([:])
    private let hasDropLimits = Atomic<Bool>(false)

    /// What has the set of listeners to itself for a while: a takeover, from its offer until it
    /// fails (or for good, once handed over), or a reload changing the listeners. Either would
    /// make the other wrong: a listener added after the offer is not handed over, and a listener
    /// removed after it would be closed under the new relay.
    public enum ListenerSetUse: Sendable, Equatable {
        case takeover
        case reload
    }

    /// Whether copies are kept at all (only a relay with a control socket can hand over).
    public let keepsCopies: Bool

    /// An empty registry, listeners not shared, keeping copies if `keepsCopies`.
    public init(keepsCopies: Bool = true) { self.keepsCopies = keepsCopies }

    /// Keeps `copy` as worker `worker`'s socket for listener `listener` (replacing any before).
    public func keep(_ copy: SocketBox, listener: UInt32, worker: Int) {
        guard keepsCopies else { return }
        copies.withLock { $0[listener, default: [:]][worker] = copy }
    }

    /// Takes the listener set for `use`; `false` (nothing taken) while the other use has it.
    public func takeListenerSet(for use: ListenerSetUse) -> Bool {
        listenerSet.withLock { current in
            guard current == nil else { return false }
            current = use
            return true
        }
    }

    /// Gives the listener set back after `use` (a reload applied, a takeover that failed).
    public func releaseListenerSet(from use: ListenerSetUse) {
        listenerSet.withLock { current in
            if current == use { current = nil }
        }
    }

    /// Worker `worker`'s reading of listener `listener`'s kernel drop counter (`socket`'s), as
    /// far as this relay counts it: the counter, or the value a takeover froze it at
    /// (`freezeKernelDrops`) when it has gone past it. Reading and freezing exclude each other,
    /// so a reading is either before the freeze (at most its value) or limited by it.
    ///
    /// One atomic load while no takeover is under way; read at counter publication, never per
    /// datagram.
    public func kernelDrops(of socket: borrowing UDPSocket, listener: UInt32, worker: Int, since baseline: UInt32) -> UInt32? {
        guard hasDropLimits.load(ordering: .acquiring) else { return socket.kernelDrops }
        return dropLimits.withLock { limits in
            guard let counter = socket.kernelDrops else { return nil }
            guard let limit = limits[listener]?[worker] else { return counter }
            // Wrapping distances from the last reading: whichever comes first.
            return limit &- baseline < counter &- baseline ? limit : counter
        }
    }

    /// Freezes, for a takeover, what this relay counts of the kernel drops of the sockets in
    /// `copies` (listener id → each worker's copy, in worker order): returns each one's counter
    /// now, per listener in `ids` order and worker, for the new relay to count from. Drops from
    /// then on are the new relay's; `thawKernelDrops` gives them back if the takeover fails.
    public func freezeKernelDrops(listeners ids: [UInt32], copies: [[SocketBox]]) -> [[UInt32?]] {
        dropLimits.withLock { limits in
            var frozen: [[UInt32?]] = []
            for (id, sockets) in zip(ids, copies) {
                var values: [UInt32?] = []
                for (worker, copy) in sockets.enumerated() {
                    let value = copy.socket.kernelDrops
                    if let value { limits[id, default: [:]][worker] = value }
                    values.append(value)
                }
                frozen.append(values)
            }
            hasDropLimits.store(!limits.isEmpty, ordering: .releasing)
            return frozen
        }
    }

    /// Counts every kernel drop again (a takeover failed after `freezeKernelDrops`).
    public func thawKernelDrops() {
        dropLimits.withLock { limits in
            limits = [:]
            hasDropLimits.store(false, ordering: .releasing)
        }
    }

    /// Forgets listener `listener`'s copies (a reload removed it): they close.
    public func forget(listener: UInt32) { _ = copies.withLock { $0.removeValue(forKey: listener) } }

    /// Forgets every copy (the workers stopped, or a failed start is undone).
    public func forgetAll() { copies.withLock { $0 = [:] } }

    /// Listener `listener`'s copies for workers `0..<workers`, in worker order; `nil` unless
    /// every worker's is there.
    public func sockets(listener: UInt32, workers: Int) -> [SocketBox]? {
        copies.withLock { all in
            guard let byWorker = all[listener] else { return nil }
            let list = (0..<workers).compactMap { byWorker[$0] }
            return list.count == workers ? list : nil
        }
    }

    /// Whether another process holds the same listening sockets: a successor that took them
    /// over, or a predecessor still draining while this process starts on them. A worker's
    /// stop then closes its listeners as they are (`WorkerSetup.closeListeners`): connecting
    /// one to itself would refuse datagrams the other process is there to take, and what it
    /// still holds is the other process's to relay, not this one's to discard.
    public var listenersShared: Bool { shared.load(ordering: .acquiring) }

    /// Sets `listenersShared`, before the workers are told to stop (never back to `false`
    /// after `holdElsewhere`).
    /// Whether another process (systemd, socket activation) holds the listening sockets for
    /// good: their files are its, not the relay's.
    public var isHeldElsewhere: Bool { heldElsewhere.load(ordering: .acquiring) }

        public func shareListeners(_ isShared: Bool) { shared.store(isShared || heldElsewhere.load(ordering: .acquiring), ordering: .releasing) }

    /// Marks the listening sockets as held by another process for good (systemd, socket
    /// activation): `listenersShared` stays `true`.
    public func holdElsewhere() {
        heldElsewhere.store(true, ordering: .releasing)
        shared.store(true, ordering: .releasing)
    }
}
