import BasicContainers
import Glibc
import RelayKernel

/// The portable driver: feeds a `RelayCore` with `recvmmsg(2)` and sends its packets with
/// `sendmmsg(2)`, for hosts where io_uring is disabled or blocked (most containers' seccomp
/// profiles). Same core, same counters, same stop and pool-change behaviour as the io_uring
/// driver.
///
/// Each loop turn: wait (`ppoll`) until a listener, the stop event or the pool event is
/// readable or the next flush deadline comes; take datagrams from every listener in batches
/// (several batches while the socket stays full), sending ready packets whenever the send
/// buffers run short; let the core end its turn; send what it hands out. While the listeners
/// stay full, the wait is skipped (a batch that came back full means more is waiting) and the
/// events are looked at with a zero-timeout poll every few turns.
///
/// Sends block on a full socket buffer while the worker runs (backpressure, as the uring
/// driver's sends wait in the kernel), but not once it is stopping or a command waits for it:
/// a slow backend must not hold a stop past its budget. A packet that then finds no room is
/// *deferred*, sent again first at the next turn (in order, with every later packet for its
/// backend behind it); a datagram that finds no send slot free waits in the receive batch for
/// the next turn. At a stop out of time, what is still deferred is counted as never sent
/// (`lines_dropped.unsent_at_exit`) and what the batch still holds as dropped at exit.
public struct PortableDriver: ~Copyable {
    private var listeners: UniqueArray<UDPSocket>
    /// The listeners' descriptors, owned by `listeners`, for `recvmmsg` and `ppoll`.
    private var listenerDescriptors: [Int32]
    /// Per listener (in `listeners` order): its id, and whether it is being removed (connected
    /// to itself, what it holds still taken and relayed, closed once empty).
    private var listenerIDs: [UInt32]
    private var draining: [Bool]
    /// The receipts of removals waiting for their listeners to close.
    private var drainReceipts: [CommandReceipt] = []
    private var connections: BackendConnections
    private let control: WorkerControl
    private var core: RelayCore
    private var batch: DatagramBatch
    private var sends: SendBatch
    private var poller: PollSet
    private let settings: WorkerSettings
    private var drops: ListenerDrops
    /// The received datagrams of `batch` not yet relayed: from `batchNext` to `batchCount`,
    /// from the listener of id `batchListener` (a datagram that found no free send slot waits there).
    private var batchNext = 0
    private var batchCount = 0
    private var batchListener: UInt32 = 0
    /// Packets handed out by the core that found their socket buffer full in a non-blocking
    /// send, oldest first, sent again before anything else; `spare` is swapped with it.
    private var deferred: [(slot: Int, backend: Int)] = []
    private var spare: [(slot: Int, backend: Int)] = []
    /// Per backend, during one `sendReady`: a packet for it was deferred, so every later one is.
    private var blocked: [Bool] = []

    /// Batches taken from one listener per turn before the others get their turn.
    private static let batchesPerTurn = 8
    /// Busy turns between two polls of the control event (a command is seen every turn:
    /// `WorkerControl.hasPending`).
    private static let busyTurnsPerPoll = 16
    /// The wait bound when nothing is due, so a stuck event is never waited on forever.
    private static let idleWaitNanoseconds: UInt64 = 1_000_000_000

    /// Opens every socket of one worker.
    ///
    /// - Throws: `SystemCallError` naming the step that failed.
    public init(settings: WorkerSettings, control: WorkerControl) throws(SystemCallError) {
        var core = try RelayCore(settings: settings, now: MonotonicClock.nanoseconds())
        let batch: DatagramBatch
        do throws(Errno) {
            batch = try DatagramBatch(count: min(settings.receiveBuffers, 256), payloadBytes: settings.maxDatagramBytes)
        } catch { throw SystemCallError("mmap", "receive buffers", error) }
        let listeners = try WorkerSetup.listeners(settings)
        let ids = settings.listeners.indices.map { UInt32($0) }
        for (id, label) in zip(ids, WorkerSetup.labels(listeners)) { core.nameListener(id: id, label: label) }
        let pool = core.pool
        let connections = try BackendConnections(
            pool: pool, sendSlots: core.sendBuffers.capacity, sendBufferBytes: settings.backendSendBufferBytes)
        var descriptors = WorkerSetup.descriptors(listeners)
        listenerDescriptors = descriptors
        descriptors.append(PollSet.descriptor(of: control.wakeup))
        poller = PollSet(descriptors: descriptors)
        sends = SendBatch(capacity: 256)
        deferred.reserveCapacity(core.sendBuffers.capacity)
        spare.reserveCapacity(core.sendBuffers.capacity)
        drops = ListenerDrops(baselines: WorkerSetup.dropBaselines(listeners, settings: settings))
        self.connections = connections
        self.settings = settings
        self.control = control
        self.core = core
        self.batch = batch
        self.listeners = listeners
        listenerIDs = ids
        draining = Array(repeating: false, count: ids.count)
    }

    /// The facts worth logging once at start-up.
    public var facts: WorkerFacts {
        WorkerFacts(
            driver: .portable, listeners: WorkerSetup.boundAddresses(listeners), receiveBufferBytes: listeners[0].receiveBufferBytes,
            ringFlags: [], minimumWait: false, receiveBuffers: batch.count, receiveBufferSize: batch.payloadBytes,
            sendSlots: core.sendBuffers.capacity)
    }

    /// The control event's place in the poll set: after every listener's, which stay in the
    /// set (ignored) once the listeners close at a stop; a listener added or removed rebuilds
    /// the set.
    private var controlIndex: Int { listenerDescriptors.count }

    /// Relays, applying what its control channel says at each turn's start, until told to stop
    /// and everything received is sent; then returns the counters.
    ///
    /// - Throws: `SystemCallError` if waiting itself fails (never for a bad datagram or a
    ///   failing backend; those are counted).
    public consuming func run() throws(SystemCallError) -> RelayCounters {
        var now = MonotonicClock.nanoseconds()
        var busy = false
        var busyTurns = 0
        var receiving = true
        // A pool published from here on wakes the worker through its control event.
        settings.routing.subscribe(control.wakeup)
        while true {
            if !busy || busyTurns >= Self.busyTurnsPerPoll {
                do throws(Errno) {
                    try poller.wait(timeoutNanoseconds: busy ? 0 : waitTimeout(now: now))
                } catch { throw SystemCallError("ppoll", "", error) }
                busyTurns = 0
                // Reset before the commands are taken: one sent after the take fires it again.
                if poller.isReady(controlIndex) { control.wakeup.reset() }
            }
            now = MonotonicClock.nanoseconds()
            // Every turn, busy or not (one atomic load when nothing is queued): a stop's budget
            // starts when it is asked.
            applyCommands(now: now, receiving: receiving)
            core.beginTurn(now: now)
            busy = receiving ? receiveAll(now: now) : false
            if receiving && draining.contains(true) { closeDrainedListeners(now: now) }
            busyTurns += busy ? 1 : 0
            // Before the core ends its turn, so what the ledgers settle is in this turn's counters.
            connections.settle(now: now, into: &core)
            if core.endTurn(now: now, moreToReceive: busy) == .stopReceiving {
                receiving = false
                for index in listeners.indices { poller.ignore(index) }
                countKernelDrops(now: now)
                WorkerSetup.closeListeners(&listeners, core: &core)
                // A listener being removed is closed with the others: its removal is done.
                for receipt in drainReceipts { receipt.workerApplied() }
                drainReceipts.removeAll()
            }
            sendReady(now: now)
            // Deferred packets hold slots of the pool in force: a pool change waits for them.
            connections.follow(&core, sendsInFlight: deferred.count, now: now)
            if drops.isDue(now: now) { countKernelDrops(now: now) }
            if core.isFlushed && connections.isSettled && deferred.isEmpty { break }
            if core.phase == .flushing && now >= core.stopDeadline { break }
        }
        countKernelDrops(now: now)
        for (slot, _) in deferred { core.withdrawSend(slot: slot) }
        let end = MonotonicClock.nanoseconds()
        connections.finish(now: end, into: &core)
        settings.routing.unsubscribe(control.wakeup)
        for receipt in drainReceipts { receipt.workerRefused() }
        return core.finish(unrelayedDatagrams: batchCount - batchNext, sendsInFlight: 0, now: end)
    }

    /// Counts what the kernel dropped at the listening sockets since the last reading.
    private mutating func countKernelDrops(now: UInt64) {
        for index in listeners.indices {
            core.countKernelDrops(drops.newDrops(listener: index, counter: listeners[index].kernelDrops))
        }
        drops.wasRead(now: now)
    }

    /// Applies every queued command in order: the listener commands here, the rest in the core.
    /// A listener added once receiving has stopped is closed at once (its receipt refused).
    private mutating func applyCommands(now: UInt64, receiving: Bool) {
        guard control.hasPending else { return }
        for (command, receipt) in control.take() {
            switch command {
            case .addListener(let id, let handOver):
                guard receiving, let socket = handOver.take() else {
                    receipt?.workerRefused()
                    continue
                }
                core.nameListener(id: id, label: WorkerSetup.label(socket.localAddress))
                listenerDescriptors.append(PollSet.descriptor(of: socket))
                listeners.append(socket)
                listenerIDs.append(id)
                draining.append(false)
                drops.append()
                rebuildPollSet()
                receipt?.workerApplied()
            case .removeListener(let id):
                guard receiving, let index = listenerIDs.firstIndex(of: id) else {
                    // Not here (or every listener closed by a stop already): nothing to drain.
                    receipt?.workerApplied()
                    continue
                }
                // Should connect(2) fail, the listener still closes once it reads empty.
                try? listeners[index].refuseNewDatagrams()
                draining[index] = true
                if let receipt { drainReceipts.append(receipt) }
            default:
                core.apply(command, now: now)
                receipt?.workerApplied()
            }
        }
    }

    /// Closes every listener being removed that holds nothing more (its last datagrams relayed,
    /// none waiting in the receive batch), then answers the removals once none is left.
    private mutating func closeDrainedListeners(now: UInt64) {
        var index = listeners.count - 1
        while index >= 0 {
            defer { index -= 1 }
            guard draining[index], !(batchNext < batchCount && batchListener == listenerIDs[index]),
                  !listeners[index].hasPendingDatagram else { continue }
            core.countKernelDrops(drops.newDrops(listener: index, counter: listeners[index].kernelDrops))
            _ = listeners.remove(at: index)
            listenerDescriptors.remove(at: index)
            listenerIDs.remove(at: index)
            draining.remove(at: index)
            drops.remove(at: index)
            rebuildPollSet()
        }
        if !draining.contains(true) {
            for receipt in drainReceipts { receipt.workerApplied() }
            drainReceipts.removeAll()
        }
    }

    /// A poll set of the listeners now, the control event last.
    private mutating func rebuildPollSet() {
        poller = PollSet(descriptors: listenerDescriptors + [PollSet.descriptor(of: control.wakeup)])
    }

    /// How long the next wait may last: until the next flush deadline, paced replay or
    /// confirmation; briefly while the stop is draining.
    private func waitTimeout(now: UInt64) -> UInt64 {
        var timeout = earliest(core.nextDeadline(now: now), connections.nextConfirmation).map { $0 > now ? $0 - now : 0 } ?? Self.idleWaitNanoseconds
        switch core.phase {
        case .running:
            break  // the next paced replay is among the core's deadlines
        case .draining:
            timeout = min(timeout, 1_000_000)
        case .flushing:
            // Sends are done when this runs, but for deferred ones; what is left is confirming
            // them, within the budget.
            timeout = min(timeout, core.stopDeadline > now ? core.stopDeadline - now : 0)
        }
        // A full socket buffer is not polled for room: deferred packets are tried every millisecond.
        if !deferred.isEmpty { timeout = min(timeout, 1_000_000) }
        return timeout
    }

    /// Relays what the last receive batch still holds, then takes what is waiting on every
    /// listener, a few batches each.
    ///
    /// - Returns: whether more is probably waiting: a listener filled its last batch, or a
    ///   datagram found no free send slot and waits in the batch.
    private mutating func receiveAll(now: UInt64) -> Bool {
        guard relayBatch(now: now) else { return true }
        var full = false
        for index in listeners.indices {
            for _ in 0..<Self.batchesPerTurn {
                guard let taken = Self.receive(into: &batch, from: listenerDescriptors[index]) else {
                    core.countReceiveError()
                    break
                }
                (batchNext, batchCount, batchListener) = (0, taken, listenerIDs[index])
                guard relayBatch(now: now) else { return true }
                if taken < batch.count { break }
                full = true
            }
        }
        return full
    }

    /// Relays the batch's datagrams not yet relayed, sending ready packets whenever the send
    /// slots run short.
    ///
    /// - Returns: `false` when a datagram found no free slot even then (sends that could not
    ///   wait for room): it and the ones after it wait for the next turn.
    private mutating func relayBatch(now: UInt64) -> Bool {
        while batchNext < batchCount {
            if !core.canAcceptDatagram {
                makeRoom(now: now)
                if !core.canAcceptDatagram { return false }
            }
            Self.relay(batchNext, of: batch, listener: batchListener, into: &core, now: now)
            batchNext += 1
        }
        return true
    }

    /// One `recvmmsg`; `nil` when it failed.
    private static func receive(into batch: inout DatagramBatch, from descriptor: Int32) -> Int? {
        do throws(Errno) { return try batch.receive(descriptor: descriptor, limit: batch.count) } catch { return nil }
    }

    @inline(__always)
    private static func relay(
        _ datagram: Int, of batch: borrowing DatagramBatch, listener: UInt32, into core: inout RelayCore, now: UInt64
    ) {
        batch.withDatagram(datagram) { payload, bytes in
            core.receive(payload, bytes, listener: listener, now: now)
        }
    }

    /// Sends every ready packet and completes a waiting pool change, so the core can take the
    /// next datagram: blocking sends finish before the call returns, so every slot comes back
    /// (non-blocking ones may leave some deferred).
    private mutating func makeRoom(now: UInt64) {
        sendReady(now: now)
        connections.follow(&core, sendsInFlight: deferred.count, now: now)
    }

    /// Sends the deferred packets, then every packet the core hands out, in batches, and hands
    /// the results back. Non-blocking once the worker is stopping or a command waits for it.
    private mutating func sendReady(now: UInt64) {
        let nonBlocking = core.isStopRequested || control.hasPending
        if blocked.count != core.pool.count { blocked = Array(repeating: false, count: core.pool.count) }
        for backend in blocked.indices { blocked[backend] = false }
        swap(&deferred, &spare)
        for index in spare.indices { send(spare[index].slot, to: spare[index].backend, nonBlocking: nonBlocking, now: now) }
        spare.removeAll(keepingCapacity: true)
        while let (slot, backend) = core.nextOutgoing() { send(slot, to: backend, nonBlocking: nonBlocking, now: now) }
        flushSends(nonBlocking: nonBlocking, now: now)
    }

    /// Adds one packet to the send batch, or defers it behind an earlier packet for its backend
    /// that was deferred in this call.
    @inline(__always)
    private mutating func send(_ slot: Int, to backend: Int, nonBlocking: Bool, now: UInt64) {
        if blocked[backend] {
            deferred.append((slot, backend))
            return
        }
        connections.sending(slot: slot, backend: backend)
        sends.append(slot: slot, backend: backend)
        if sends.isFull { flushSends(nonBlocking: nonBlocking, now: now) }
    }

    private mutating func flushSends(nonBlocking: Bool, now: UInt64) {
        guard sends.count > 0 else { return }
        sends.send(from: core.sendBuffers, to: connections.sockets, nonBlocking: nonBlocking)
        for index in 0..<sends.count {
            let slot = sends.slot(index)
            let backend = core.sendBuffers.backend(of: slot)
            if sends.result(index) == -EAGAIN {
                // No room and no waiting for it: sent again later, in order.
                connections.withdrawn(slot: slot, backend: backend)
                deferred.append((slot, backend))
                blocked[backend] = true
                continue
            }
            // A send the batch tried again (an earlier packet's pending refusal failed it) has
            // its second result here.
            let outcome = core.sendCompleted(slot: slot, result: sends.result(index), retried: sends.wasRetried(index))
            connections.record(outcome, slot: slot, now: now)
        }
        sends.removeAll()
    }

}
