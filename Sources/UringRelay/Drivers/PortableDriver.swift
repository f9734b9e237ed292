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
public struct PortableDriver: ~Copyable {
    private var listeners: RigidArray<UDPSocket>
    /// The listeners' descriptors, owned by `listeners`, for `recvmmsg` and `ppoll`.
    private let listenerDescriptors: [Int32]
    private var connections: BackendConnections
    private let control: WorkerControl
    private var core: RelayCore
    private var batch: DatagramBatch
    private var sends: SendBatch
    private var poller: PollSet
    private let settings: WorkerSettings
    private var drops: ListenerDrops

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
        let core = try RelayCore(settings: settings, now: MonotonicClock.nanoseconds())
        let batch: DatagramBatch
        do throws(Errno) {
            batch = try DatagramBatch(count: min(settings.receiveBuffers, 256), payloadBytes: settings.maxDatagramBytes)
        } catch { throw SystemCallError("mmap", "receive buffers", error) }
        let listeners = try WorkerSetup.listeners(settings)
        let pool = core.pool
        let connections = try BackendConnections(
            pool: pool, sendSlots: core.sendBuffers.capacity, sendBufferBytes: settings.backendSendBufferBytes)
        var descriptors = WorkerSetup.descriptors(listeners)
        listenerDescriptors = descriptors
        descriptors.append(PollSet.descriptor(of: control.wakeup))
        poller = PollSet(descriptors: descriptors)
        sends = SendBatch(capacity: 256)
        drops = ListenerDrops(count: settings.listeners.count)
        self.connections = connections
        self.settings = settings
        self.control = control
        self.core = core
        self.batch = batch
        self.listeners = listeners
    }

    /// The facts worth logging once at start-up.
    public var facts: WorkerFacts {
        WorkerFacts(
            driver: .portable, listeners: WorkerSetup.boundAddresses(listeners), receiveBufferBytes: listeners[0].receiveBufferBytes,
            ringFlags: [], minimumWait: false, receiveBuffers: batch.count, receiveBufferSize: batch.payloadBytes,
            sendSlots: core.sendBuffers.capacity)
    }

    /// The control event's place in the poll set: after every listener's, which stay in the
    /// set (ignored) once the listeners close, so the place never moves.
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
            control.apply(to: &core, now: now)
            core.beginTurn(now: now)
            busy = receiving ? receiveAll(now: now) : false
            busyTurns += busy ? 1 : 0
            // Before the core ends its turn, so what the ledgers settle is in this turn's counters.
            connections.settle(now: now, into: &core)
            if core.endTurn(now: now, moreToReceive: busy) == .stopReceiving {
                receiving = false
                for index in listeners.indices { poller.ignore(index) }
                countKernelDrops(now: now)
                WorkerSetup.closeListeners(&listeners, core: &core)
            }
            sendReady(now: now)
            connections.follow(&core, sendsInFlight: 0, now: now)
            if drops.isDue(now: now) { countKernelDrops(now: now) }
            if core.isFlushed && connections.isSettled { break }
            if core.phase == .flushing && now >= core.stopDeadline { break }
        }
        countKernelDrops(now: now)
        let end = MonotonicClock.nanoseconds()
        connections.finish(now: end, into: &core)
        settings.routing.unsubscribe(control.wakeup)
        return core.finish(unrelayedDatagrams: 0, sendsInFlight: 0, now: end)
    }

    /// Counts what the kernel dropped at the listening sockets since the last reading.
    private mutating func countKernelDrops(now: UInt64) {
        for index in listeners.indices {
            core.countKernelDrops(drops.newDrops(listener: index, counter: listeners[index].kernelDrops))
        }
        drops.wasRead(now: now)
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
            // Sends are done when this runs; what is left is confirming them, within the budget.
            timeout = min(timeout, core.stopDeadline > now ? core.stopDeadline - now : 0)
        }
        return timeout
    }

    /// Takes what is waiting on every listener, a few batches each.
    ///
    /// - Returns: whether a listener filled its last batch (more is probably waiting).
    private mutating func receiveAll(now: UInt64) -> Bool {
        var full = false
        for index in listeners.indices {
            for _ in 0..<Self.batchesPerTurn {
                guard let taken = Self.receive(into: &batch, from: listenerDescriptors[index]) else {
                    core.countReceiveError()
                    break
                }
                for datagram in 0..<taken {
                    if !core.canAcceptDatagram { makeRoom(now: now) }
                    Self.relay(datagram, of: batch, listener: index, into: &core, now: now)
                }
                if taken < batch.count { break }
                full = true
            }
        }
        return full
    }

    /// One `recvmmsg`; `nil` when it failed.
    private static func receive(into batch: inout DatagramBatch, from descriptor: Int32) -> Int? {
        do throws(Errno) { return try batch.receive(descriptor: descriptor, limit: batch.count) } catch { return nil }
    }

    @inline(__always)
    private static func relay(
        _ datagram: Int, of batch: borrowing DatagramBatch, listener: Int, into core: inout RelayCore, now: UInt64
    ) {
        batch.withDatagram(datagram) { payload, bytes in
            core.receive(payload, bytes, listener: listener, now: now)
        }
    }

    /// Sends every ready packet and completes a waiting pool change, so the core can take the
    /// next datagram: sends here finish before the call returns, so every slot comes back.
    private mutating func makeRoom(now: UInt64) {
        sendReady(now: now)
        connections.follow(&core, sendsInFlight: 0, now: now)
    }

    /// Sends every packet the core hands out, in batches, and hands the results back.
    private mutating func sendReady(now: UInt64) {
        while let (slot, backend) = core.nextOutgoing() {
            connections.sending(slot: slot, backend: backend)
            sends.append(slot: slot, backend: backend)
            if sends.isFull { flushSends(now: now) }
        }
        flushSends(now: now)
    }

    private mutating func flushSends(now: UInt64) {
        guard sends.count > 0 else { return }
        sends.send(from: core.sendBuffers, to: connections.sockets)
        for index in 0..<sends.count {
            // A send the batch tried again (an earlier packet's pending refusal failed it) has
            // its second result here.
            let slot = sends.slot(index)
            let outcome = core.sendCompleted(slot: slot, result: sends.result(index), retried: sends.wasRetried(index))
            connections.record(outcome, slot: slot, now: now)
        }
        sends.removeAll()
    }

}
