import BasicContainers
import RelayKernel

/// One listener of a worker: its socket, its 32-bit id and what the worker follows of it.
struct WorkerListener: ~Copyable {
    /// Its id: the `listener` the core counts it under, and the receive's `UserData.index`.
    let id: UInt32
    /// The listening socket (UDP, `SO_REUSEPORT`: every worker has its own on the same
    /// address; a Unix datagram listener: every worker reads a duplicate of the one socket).
    let socket: UDPSocket
    /// Set while it is being removed: when its drain ends at the latest (monotonic
    /// nanoseconds), whether or not it reads empty by then.
    var drainDeadline: UInt64?
    /// The socket's kernel drop counter (`SO_MEMINFO`, 32 bits, wrapping) at its last reading
    /// (for an inherited socket, its value when this process took it).
    var dropBaseline: UInt32 = 0
    /// Whether this worker counts the socket's drops: not when every worker reads one socket
    /// (socket activation), where worker 0 counts them once for all.
    var countsDrops = true
    /// io_uring only (the portable driver never arms one): its multishot receive is armed.
    var receiveArmed = false
    /// io_uring only: the cancellation of its receive is still to be submitted.
    var cancelWanted = false
}

/// A worker's listeners, looked up by id, never by a position that a removal shifts: the one
/// owner of their sockets, shared by both drivers.
///
/// A listener is added (a reload's `SocketHandOver`), drained (a removal: connected to itself so
/// it takes nothing new, what it holds relayed, then closed), or closed with all the others
/// once receiving stops. Their kernel drop counters are read here, at most every
/// `CounterBoard.publishIntervalNanoseconds`, when one closes, and at exit, and counted per
/// listener.
struct WorkerListeners: ~Copyable {
    private var entries: UniqueArray<WorkerListener>
    private var nextDropRead: UInt64 = 0
    /// Where a takeover freezes what this relay counts of the kernel drops, and this worker's
    /// index there (`nil`: no takeover can happen).
    private let handOver: (registry: ListenerRegistry, worker: Int)?
    /// The receipts of removals whose listeners are still draining.
    private var removals: [CommandReceipt] = []
    /// Whether a receive was still armed on a listener when a stop out of time closed them all
    /// (the kernel may still write into the receive buffers then).
    private(set) var closedWithReceiveArmed = false

    /// The longest a removed listener drains before it closes, whatever it still holds: one
    /// connected to itself reads empty within a few turns, but one whose `connect(2)` failed
    /// still takes its clients' datagrams and would never read empty. Well within
    /// `Relay.workerAnswerNanoseconds`, which the reload waits for the removal.
    static let removalDrainNanoseconds: UInt64 = 1_000_000_000

    /// The least time spent counting what a removed listener still holds as it closes.
    static let removalDiscardNanoseconds: UInt64 = 10_000_000

    /// Opens the start-up listeners of `settings` (`WorkerSetup.listeners`, the one place a
    /// worker opens them), with ids in their order, and names each in `core`.
    ///
    /// - Throws: `SystemCallError` from the first that cannot be bound (those bound close).
    init(settings: WorkerSettings, core: inout RelayCore) throws(SystemCallError) {
        handOver = settings.handOver.map { ($0.registry, $0.worker) }
        var sockets = try WorkerSetup.listeners(settings)
        let baselines = WorkerSetup.dropBaselines(sockets, settings: settings)
        entries = UniqueArray(minimumCapacity: sockets.count)
        var id = UInt32(sockets.count)
        while !sockets.isEmpty {
            id -= 1
            var listener = WorkerListener(id: id, socket: sockets.removeLast())
            listener.dropBaseline = baselines[Int(id)] ?? 0
            listener.countsDrops = baselines[Int(id)] != nil
            entries.insert(listener, at: 0)
        }
        for index in entries.indices {
            core.nameListener(id: entries[index].id, label: WorkerSetup.label(entries[index].socket.localAddress))
        }
    }

    /// How many listeners are open.
    var count: Int { entries.count }
    /// Whether every listener has closed.
    var isEmpty: Bool { entries.isEmpty }
    /// Positions `0..<count`, valid until the next add or close.
    var indices: Range<Int> { entries.indices }

    /// The listener at `index` (valid until the next add or close).
    subscript(index: Int) -> WorkerListener {
        _read { yield entries[index] }
        _modify { yield &entries[index] }
    }

    /// The position of listener `id`, if it is open.
    func index(of id: UInt32) -> Int? {
        for index in entries.indices where entries[index].id == id { return index }
        return nil
    }

    /// Whether a removed listener is still draining.
    var isDraining: Bool {
        for index in entries.indices where entries[index].drainDeadline != nil { return true }
        return false
    }

    /// Whether a listener's receive is armed (io_uring).
    var anyReceiveArmed: Bool {
        for index in entries.indices where entries[index].receiveArmed { return true }
        return false
    }

    /// Whether a listener's socket holds a datagram (a system call per listener: not per turn
    /// while running).
    var anyPending: Bool {
        for index in entries.indices where entries[index].socket.hasPendingDatagram { return true }
        return false
    }

    /// The bound addresses, in order (with the ports the kernel chose for port 0).
    var boundAddresses: [SocketAddress] {
        var bound: [SocketAddress] = []
        for index in entries.indices { bound.append(entries[index].socket.localAddress) }
        return bound
    }

    /// The receive buffer the kernel granted the first listener.
    var receiveBufferBytes: Int { entries.isEmpty ? 0 : entries[0].socket.receiveBufferBytes }

    /// Adds listener `id`, naming it in `core`. A Unix datagram listener is one socket every
    /// worker reads: only worker 0 counts its kernel drops.
    mutating func add(id: UInt32, socket: consuming UDPSocket, core: inout RelayCore) {
        let address = socket.localAddress
        // As `WorkerSetup.listeners` does at start: this worker's CPU (`nil` if its pinning
        // failed), which only the worker knows. setsockopt on an open UDP socket does not fail.
        if address.family != .unix, let cpu = core.settings.incomingCPU { try? socket.preferIncomingCPU(cpu) }
        core.nameListener(id: id, label: WorkerSetup.label(address))
        var listener = WorkerListener(id: id, socket: socket)
        listener.countsDrops = address.family != .unix || (core.settings.handOver?.worker ?? 0) == 0
        entries.append(listener)
    }

    /// Starts removing listener `id`: it is connected to itself, so it takes no new datagram,
    /// and drains until it reads empty or `removalDrainNanoseconds` pass. `receipt` is answered
    /// once no removal is left.
    ///
    /// - Returns: `false` when no such listener is open (nothing to drain).
    mutating func startRemoval(id: UInt32, receipt: CommandReceipt?, now: UInt64) -> Bool {
        guard let index = index(of: id) else { return false }
        // Should connect(2) fail it still takes datagrams: the drain's bound closes it then.
        try? entries[index].socket.refuseNewDatagrams()
        return beginDrain(id: id, receipt: receipt, now: now)
    }

    /// Marks listener `id` as draining, bounded by `removalDrainNanoseconds` from `now`, without
    /// refusing new datagrams: what `startRemoval` leaves when `connect(2)` failed.
    ///
    /// - Returns: `false` when no such listener is open.
    mutating func beginDrain(id: UInt32, receipt: CommandReceipt?, now: UInt64) -> Bool {
        guard let index = index(of: id) else { return false }
        if entries[index].drainDeadline == nil { entries[index].drainDeadline = now &+ Self.removalDrainNanoseconds }
        if let receipt { removals.append(receipt) }
        return true
    }

    /// Moves each listener being removed on, and closes those done: one done reads empty and
    /// holds nothing unrelayed in the driver (it is not `unrelayedListener`), or is past its
    /// drain's bound.
    /// A receive still armed on it is cancelled first (`cancelWanted`) and it closes once the
    /// receive has ended. The removals are answered once none is left.
    ///
    /// - Returns: whether one closed.
    mutating func followRemovals(now: UInt64, core: inout RelayCore, unrelayedListener: UInt32?) -> Bool {
        var closed = false
        var index = entries.count - 1
        while index >= 0 {
            defer { index -= 1 }
            guard let deadline = entries[index].drainDeadline else { continue }
            let overdue = now >= deadline
            if !overdue && entries[index].socket.hasPendingDatagram { continue }
            if entries[index].receiveArmed {
                // Connected to itself, it takes nothing new: what it held is in the buffers.
                // (Asked again each turn until the receive reports its end; a cancellation that
                // finds it gone completes as a `.cancel` CQE, ignored.)
                entries[index].cancelWanted = true
                continue
            }
            if !overdue && unrelayedListener == entries[index].id { continue }
            closeRemoved(at: index, core: &core)
            closed = true
        }
        if !removals.isEmpty && !isDraining {
            for receipt in removals { receipt.workerApplied() }
            removals.removeAll()
        }
        return closed
    }

    /// Closes a removed listener: its last kernel drops are counted, and what it still holds
    /// (its drain ran out of time: its `connect(2)` failed) is counted as dropped as it closes.
    private mutating func closeRemoved(at index: Int, core: inout RelayCore) {
        countDrops(at: index, core: &core)
        let listener = entries.remove(at: index)
        let deadline = MonotonicClock.nanoseconds() &+ Self.removalDiscardNanoseconds
        let discarded = listener.socket.discardPending(deadline: deadline)
        let uncounted = listener.socket.hasPendingDatagram ? 1 : 0
        if discarded > 0 || uncounted > 0 { core.countDiscardedAtStop(discarded, listenersLeftUncounted: uncounted) }
    }

    /// Closes every listener once receiving has stopped (`WorkerSetup.closeListeners`: what
    /// each still holds is counted as dropped at exit); the removals still draining are
    /// answered: their listeners closed with the others.
    mutating func closeAll(core: inout RelayCore, now: UInt64) {
        countDrops(core: &core, now: now)
        closedWithReceiveArmed = closedWithReceiveArmed || anyReceiveArmed
        var sockets = UniqueArray<UDPSocket>(minimumCapacity: entries.count)
        while !entries.isEmpty { sockets.append(entries.removeLast().socket) }
        WorkerSetup.closeListeners(&sockets, core: &core)
        for receipt in removals { receipt.workerApplied() }
        removals.removeAll()
    }

    /// Refuses the removals still waiting (the worker ends without having drained them).
    mutating func refuseRemovals() {
        for receipt in removals { receipt.workerRefused() }
        removals.removeAll()
    }

    /// Whether the kernel drop counters are due to be read at `now`.
    func dropsDue(now: UInt64) -> Bool { now >= nextDropRead }

    /// Counts what the kernel dropped at every listening socket since the last reading, per
    /// listener.
    mutating func countDrops(core: inout RelayCore, now: UInt64) {
        for index in entries.indices { countDrops(at: index, core: &core) }
        nextDropRead = now &+ CounterBoard.publishIntervalNanoseconds
    }

    private mutating func countDrops(at index: Int, core: inout RelayCore) {
        // nil when the kernel would not say.
        guard entries[index].countsDrops else { return }
        let reading = if let handOver {
            handOver.registry.kernelDrops(
                of: entries[index].socket, listener: entries[index].id, worker: handOver.worker, since: entries[index].dropBaseline)
        } else {
            entries[index].socket.kernelDrops
        }
        guard let counter = reading else { return }
        let new = UInt64(counter &- entries[index].dropBaseline)
        entries[index].dropBaseline = counter
        core.countKernelDrops(new, listener: entries[index].id)
    }
}
