import RelayKernel

/// What a worker holds whatever its driver: the core, its listeners, its backend sockets and
/// its control channel. The transport (`WorkerTransport`) holds the rest.
struct WorkerState: ~Copyable {
    var core: RelayCore
    var listeners: WorkerListeners
    var connections: BackendConnections
    /// The TCP ingest listeners and connections (`TCPIngest`).
    var tcp: TCPIngest
    /// The driver saw the TCP ingest's epoll descriptor readable in its last wait.
    var tcpReady = false
    let control: WorkerControl
    let settings: WorkerSettings

    /// Opens the core (its send buffers), the start-up listeners and the backend sockets.
    ///
    /// - Throws: `SystemCallError` naming the step that failed (what was opened closes).
    init(settings: WorkerSettings, control: WorkerControl) throws(SystemCallError) {
        var core = try RelayCore(settings: settings, now: MonotonicClock.nanoseconds())
        let listeners = try WorkerListeners(settings: settings, core: &core)
        let tcp = try TCPIngest(settings: settings, core: &core)
        let connections = try BackendConnections(
            pool: core.sendPool, sendSlots: core.sendBuffers.capacity, sendBufferBytes: settings.backendSendBufferBytes,
            sendProtocol: settings.sendProtocol, streamQueueBytes: settings.tcpBackendQueueBytes, now: MonotonicClock.nanoseconds())
        self.core = core
        self.listeners = listeners
        self.connections = connections
        self.tcp = tcp
        self.control = control
        self.settings = settings
    }
}

/// How a worker ended: its counters, whatever the end, and the failure that ended it early.
public struct WorkerExit: Sendable {
    /// What the worker counted up to its end.
    public var counters: RelayCounters
    /// Why it stopped before it was told to, if it did (the ring or the wait failed).
    public var failure: SystemCallError?
}

/// A driver's transport steps, which the turn skeleton (`WorkerLoop`) calls in order.
///
/// A transport owns the driver's own kernel resources (io_uring: the ring, its buffer ring;
/// portable: the receive and send batches) and never decides what a turn does: commands,
/// listener removals, kernel drops, the stop and its deadline are the skeleton's.
protocol WorkerTransport: ~Copyable {
    /// Waits until something is to be done or the next deadline comes (io_uring: submits what
    /// is prepared in the same call, then takes every completion).
    ///
    /// - Throws: `SystemCallError` when waiting itself fails: the worker ends (its counters kept).
    mutating func wait(_ worker: inout WorkerState, now: UInt64) throws(SystemCallError)

    /// Relays what was received, as far as the core takes it.
    ///
    /// - Returns: whether more is probably waiting (asked of a draining core).
    mutating func receive(_ worker: inout WorkerState, now: UInt64) -> Bool

    /// The listener whose datagrams wait in the transport unrelayed, taken from its socket
    /// (a removed listener closes only once they are relayed), if any.
    var unrelayedListener: UInt32? { get }

    /// The listeners changed (one added, closed, or all closed).
    mutating func listenersChanged(_ worker: borrowing WorkerState)

    /// The core stopped receiving: stop taking datagrams.
    mutating func stopReceiving(_ worker: inout WorkerState)

    /// Hands every packet the core has ready to the kernel.
    mutating func send(_ worker: inout WorkerState, now: UInt64)

    /// Sends handed out by the core that have not completed (in flight or waiting to go).
    var sendsPending: Int { get }

    /// Whether nothing waits in the transport: no datagram unrelayed, no send pending, no
    /// receive armed.
    func isIdle(_ worker: borrowing WorkerState) -> Bool

    /// The stop ran out of time: the last sends go to the kernel and what completed is taken.
    mutating func lastCompletions(_ worker: inout WorkerState, now: UInt64)

    /// The worker ends: packets never handed to the kernel are given back to the core.
    ///
    /// - Returns: datagrams received and never relayed, and sends whose completion never came.
    mutating func finish(_ worker: inout WorkerState) -> (unrelayed: Int, inFlight: Int)

    /// Releases the transport's kernel resources in their order (io_uring: the ring exits
    /// first, then its buffers unmap); memory the kernel may still write into (a send or a
    /// receive whose end never came) is kept mapped, the core's send buffers included.
    consuming func close(_ worker: inout WorkerState)
}

/// The one turn skeleton both drivers run: wait → commands → receive and relay → follow
/// removals → settle → end the turn → close the listeners once receiving stopped → send →
/// follow a pool change → read kernel drops → stop when done or out of time; each driver
/// supplies its transport steps (`WorkerTransport`).
///
/// Teardown, on every path (a stop, a failed wait): the counters are taken, then the transport
/// closes (the ring exits before its buffers unmap), then the core's send buffers, the
/// listeners and the backend sockets go with `worker`.
struct WorkerLoop<Transport: WorkerTransport & ~Copyable>: ~Copyable {
    // Declared in teardown order, for a loop dropped without running: the transport (the
    // ring) goes before the worker's send buffers and sockets.
    var transport: Transport
    var worker: WorkerState

    /// Relays, applying the control channel's commands at each turn's start, until told to stop
    /// and everything received is sent, or until waiting fails; then tears down in order.
    ///
    /// - Returns: the counters, and the failure that ended the worker early, if one did.
    consuming func run() -> WorkerExit {
        var now = MonotonicClock.nanoseconds()
        // A pool published from here on wakes the worker through its control event.
        worker.settings.routing.subscribe(worker.control.wakeup)
        var failure: SystemCallError?
        do throws(SystemCallError) { try turns(now: &now) } catch { failure = error }
        worker.listeners.countDrops(core: &worker.core, now: now)
        worker.tcp.closeAll(core: &worker.core, now: now)
        worker.tcp.countUnreadAtExit(core: &worker.core)
        let (unrelayed, inFlight) = transport.finish(&worker)
        let end = MonotonicClock.nanoseconds()
        worker.connections.finish(now: end, into: &worker.core)
        let counters = worker.core.finish(unrelayedDatagrams: unrelayed, sendsInFlight: inFlight, now: end)
        worker.settings.routing.unsubscribe(worker.control.wakeup)
        worker.listeners.refuseRemovals()
        var worker = self.worker
        let transport = self.transport
        transport.close(&worker)
        return WorkerExit(counters: counters, failure: failure)
    }

    /// The turns, until the stop is done or out of time.
    @inline(__always)
    private mutating func turns(now: inout UInt64) throws(SystemCallError) {
        while true {
            try transport.wait(&worker, now: now)
            now = MonotonicClock.nanoseconds()
            // Every turn (one atomic load when nothing is queued): a stop's budget starts when
            // it is asked.
            applyCommands(now: now)
            worker.core.beginTurn(now: now)
            var moreToReceive = transport.receive(&worker, now: now)
            if worker.tcpReady && worker.core.phase != .flushing {
                worker.tcpReady = false
                if worker.tcp.service(core: &worker.core, now: now) { moreToReceive = true }
            }
            // A drain ends only once the connections' sockets are empty too (or its budget is out).
            if !moreToReceive && worker.core.phase == .draining && worker.tcp.holdsUnreadBytes() { moreToReceive = true }
            worker.tcp.closeIdle(core: &worker.core, now: now)
            if worker.core.phase != .flushing && worker.listeners.isDraining {
                let waiting = transport.unrelayedListener
                if worker.listeners.followRemovals(now: now, core: &worker.core, unrelayedListener: waiting) {
                    transport.listenersChanged(worker)
                }
            }
            // Before the core ends its turn, so what the ledgers settle is in this turn's counters.
            worker.connections.settle(now: now, into: &worker.core)
            if worker.core.endTurn(now: now, moreToReceive: moreToReceive) == .stopReceiving {
                transport.stopReceiving(&worker)
            }
            if worker.core.phase == .flushing && !worker.listeners.isEmpty && !worker.listeners.anyReceiveArmed {
                // Every receive has ended: nothing more is taken from the sockets. Before the
                // sends, so counting what they hold gets its share of the stop budget.
                worker.listeners.closeAll(core: &worker.core, now: now)
                transport.listenersChanged(worker)
            }
            if worker.core.phase == .flushing && !worker.tcp.isClosed {
                // The drain is over: what the connections still hold unframed is a partial
                // line each, counted as they close.
                worker.tcp.closeAll(core: &worker.core, now: now)
            }
            transport.send(&worker, now: now)
            worker.connections.follow(&worker.core, sendsInFlight: transport.sendsPending, now: now)
            if worker.listeners.dropsDue(now: now) { worker.listeners.countDrops(core: &worker.core, now: now) }
            if worker.core.isFlushed && worker.connections.isSettled && transport.isIdle(worker) { return }
            if worker.core.phase == .flushing && now >= worker.core.stopDeadline {
                transport.lastCompletions(&worker, now: now)
                if !worker.listeners.isEmpty {
                    // A receive whose cancellation has not come yet takes nothing more (with
                    // DEFER_TASKRUN only inside a wait, and there is none left), so what the
                    // listeners hold can still be counted before they close.
                    worker.listeners.closeAll(core: &worker.core, now: now)
                    transport.listenersChanged(worker)
                }
                return
            }
        }
    }

    /// Applies every queued command in order: the listener commands here, the rest in the core.
    /// A listener added once the core stops receiving is closed at once (its receipt refused);
    /// a removal of a listener not open (or closed by a stop already) has nothing to drain.
    private mutating func applyCommands(now: UInt64) {
        guard worker.control.hasPending else { return }
        for (command, receipt) in worker.control.take() {
            switch command {
            case .addListener(let id, let handOver):
                guard worker.core.phase == .running, !worker.core.isStopRequested, let socket = handOver.take() else {
                    receipt?.workerRefused()
                    continue
                }
                worker.listeners.add(id: id, socket: socket, core: &worker.core)
                transport.listenersChanged(worker)
                receipt?.workerApplied()
            case .addTCPListener(let id, let handOver):
                guard worker.core.phase == .running, !worker.core.isStopRequested, let socket = handOver.take(),
                      worker.tcp.add(id: id, socket: socket, core: &worker.core) else {
                    receipt?.workerRefused()
                    continue
                }
                transport.listenersChanged(worker)
                receipt?.workerApplied()
            case .removeTCPListener(let id):
                worker.tcp.remove(id: id, core: &worker.core, now: now)
                receipt?.workerApplied()
            case .removeListener(let id):
                guard worker.core.phase != .flushing,
                      worker.listeners.startRemoval(id: id, receipt: receipt, now: now) else {
                    receipt?.workerApplied()
                    continue
                }
            default:
                worker.core.apply(command, now: now)
                receipt?.workerApplied()
            }
        }
    }
}

extension WorkerLoop where Transport: IODriver & ~Copyable {
    /// Opens one worker: its core, listeners and backend sockets (`WorkerState`), then the
    /// driver's transport. Call on the worker's own thread (io_uring: `SINGLE_ISSUER`).
    ///
    /// - Throws: `SystemCallError` naming the step that failed; what was opened closes, the
    ///   transport's own resources in their order (`Transport.init(opening:)`).
    init(settings: WorkerSettings, control: WorkerControl) throws(SystemCallError) {
        let worker = try WorkerState(settings: settings, control: control)
        transport = try Transport(opening: worker)
        self.worker = worker
    }

    /// The facts worth logging once at start-up.
    var facts: WorkerFacts { transport.facts(worker) }
}
