import BasicContainers
import Glibc
import RelayKernel

/// The io_uring driver: feeds a `RelayCore` from one ring, owned by one worker thread.
///
/// A multishot `recv` stays armed on every listener, taking buffers from one
/// provided-buffer ring; sends are `send` SQEs on connected backend sockets, submitted with the
/// next wait, in order per backend (`OrderedSends`). Each loop turn: publish recycled buffers,
/// re-arm any receive the kernel ended, submit every queued send and wait for completions in
/// one `io_uring_enter2`; then take every CQE off the queue, hand received datagrams to the
/// core, let the core end its turn and queue the sends it hands out for the next turn's submit.
///
/// A request that finds the submission queue full is not lost: the queue is submitted to make
/// room, and if the kernel takes none of it (short of memory, completions overflowing) the
/// request is counted (`submissions_deferred`), the turn ends and it is made again next turn.
///
/// The kernel ends a multishot receive at every empty datagram (its zero-byte payload reads as
/// the end of a stream). The turn after such an end does not wait out the minimum wait: it
/// re-arms and returns at the first completion, so an empty datagram costs one extra
/// `io_uring_enter`, never 250 µs of a disarmed socket.
public struct IOUringDriver: ~Copyable {
    private let ring: Ring
    private var buffers: ProvidedBufferRing
    private var listeners: UniqueArray<UDPSocket>
    private var connections: BackendConnections
    private let control: WorkerControl
    private var core: RelayCore
    private var queue: ReceiveQueue
    private let settings: WorkerSettings
    /// Per listener (in `listeners` order): its id (the receive's `user_data` index), whether
    /// its multishot receive is armed, and whether it is being removed (connected to itself,
    /// what it holds still taken and relayed; its receive cancelled once it holds nothing, and
    /// it closes once the cancellation has completed).
    private var listenerIDs: [UInt32]
    private var receiveArmed: [Bool]
    private var draining: [Bool]
    /// The receipts of removals waiting for their listeners to close.
    private var drainReceipts: [CommandReceipt] = []
    private var receiveEnded = false
    private var receivedThisTurn = false
    private var sends: OrderedSends
    private var drops: ListenerDrops
    /// Whether the control event's poll is to be armed (again) before the next wait.
    private var wakeupPollWanted = true
    /// Receives whose cancellation is still to be submitted (receiving is stopping).
    private var cancelWanted: [Bool]
    /// A request found no room in the submission queue since the last wait: nothing more is
    /// prepared before the next one, which is kept short.
    private var submissionsDeferred = false

    /// Completions a waiting worker asks for before the minimum wait lets it go with fewer.
    private static let completionBatch: UInt32 = 32
    /// The wait bound when no batch is open. Without a bound the kernel ends a minimum wait
    /// that saw no completion with `ETIME`, which would wake an idle worker every 250 µs; with
    /// one it goes on waiting for the first completion.
    private static let idleWaitNanoseconds: UInt64 = 1_000_000_000

    /// Opens every kernel resource of one worker. Call on the worker's own thread: the ring
    /// accepts submissions only from the thread that created it (`SINGLE_ISSUER`).
    ///
    /// - Throws: `SystemCallError` naming the step that failed.
    public init(settings: WorkerSettings, control: WorkerControl) throws(SystemCallError) {
        var core = try RelayCore(settings: settings, now: MonotonicClock.nanoseconds())
        let bufferCount = settings.receiveBuffers
        let sizing = settings.ringSizing(backendCount: core.pool.count)
        assert(sizing.sendSlots == core.sendBuffers.capacity, "the send slots and the ring are sized apart")
        let ring: Ring
        do throws(Errno) { ring = try Ring(sizing: sizing) } catch {
            throw SystemCallError("io_uring_queue_init", "", error)
        }
        let buffers: ProvidedBufferRing
        do throws(Errno) {
            buffers = try ProvidedBufferRing(ring: ring, groupID: 0, count: bufferCount, payloadBytes: settings.maxDatagramBytes)
        } catch { throw SystemCallError("io_uring_register_buf_ring", "\(bufferCount) buffers", error) }
        let listeners = try WorkerSetup.listeners(settings)
        let ids = settings.listeners.indices.map { UInt32($0) }
        for (id, label) in zip(ids, WorkerSetup.labels(listeners)) { core.nameListener(id: id, label: label) }
        let pool = core.pool
        let connections = try BackendConnections(
            pool: pool, sendSlots: core.sendBuffers.capacity, sendBufferBytes: settings.backendSendBufferBytes)
        sends = OrderedSends(backends: pool.count, slots: core.sendBuffers.capacity)
        self.connections = connections
        self.settings = settings
        self.control = control
        self.core = core
        self.ring = ring
        self.buffers = buffers
        self.listeners = listeners
        listenerIDs = ids
        draining = Array(repeating: false, count: ids.count)
        receiveArmed = Array(repeating: false, count: settings.listeners.count)
        cancelWanted = Array(repeating: false, count: settings.listeners.count)
        drops = ListenerDrops(count: settings.listeners.count)
        queue = ReceiveQueue(capacity: bufferCount)
    }

    /// The facts worth logging once at start-up.
    public var facts: WorkerFacts {
        WorkerFacts(
            driver: .uring, listeners: WorkerSetup.boundAddresses(listeners), receiveBufferBytes: listeners[0].receiveBufferBytes,
            ringFlags: ring.setupFlagNames, minimumWait: ring.supportsMinimumWait,
            receiveBuffers: buffers.count, receiveBufferSize: buffers.bufferBytes,
            sendSlots: core.sendBuffers.capacity)
    }

    /// Relays, applying what its control channel says at each turn's start, until told to stop
    /// and everything received is sent; then closes the ring and returns the counters.
    ///
    /// - Throws: `SystemCallError` if the ring itself fails (never for a bad datagram or a
    ///   failing backend; those are counted).
    public consuming func run() throws(SystemCallError) -> RelayCounters {
        var now = MonotonicClock.nanoseconds()
        // A pool published from here on wakes the worker through its control event.
        settings.routing.subscribe(control.wakeup)
        while true {
            buffers.publish()
            armPolls()
            armReceives()
            submitCancels()
            let (completions, timeout, minimumWait) = waitPlan(now: now)
            receiveEnded = false
            do {
                try ring.submitAndWait(
                    completions: completions, timeoutNanoseconds: timeout, minimumWaitMicroseconds: minimumWait)
            } catch { throw SystemCallError("io_uring_enter", "", error) }
            submissionsDeferred = false
            now = MonotonicClock.nanoseconds()
            receivedThisTurn = false
            while let completion = ring.nextCompletion() { handle(completion, now: now) }
            // After the completions: the control event is reset in there, so a command or a
            // publication made since is either seen here or fires the re-armed poll.
            applyCommands(now: now)
            if draining.contains(true) && core.phase != .flushing { followDrains(now: now) }
            core.beginTurn(now: now)
            relayQueued(now: now)
            // Only a draining core asks; the peek is a system call, not paid while running.
            let moreToReceive = core.phase == .draining && (!queue.isEmpty || receivedThisTurn || anyListenerHasPending)
            // Before the core ends its turn, so what the ledgers settle is in this turn's counters.
            connections.settle(now: now, into: &core)
            if core.endTurn(now: now, moreToReceive: moreToReceive) == .stopReceiving {
                cancelWanted = receiveArmed
                submitCancels()
            }
            queueReadySends()
            if core.phase == .flushing && !listeners.isEmpty && !receiveArmed.contains(true) {
                // Every receive has ended (cancelled): nothing more is taken from the sockets.
                countKernelDrops(now: now)
                WorkerSetup.closeListeners(&listeners, core: &core)
                forgetListeners()
            }
            connections.follow(&core, sendsInFlight: sends.count, now: now)
            if drops.isDue(now: now) { countKernelDrops(now: now) }
            if core.isFlushed && sends.isEmpty && !receiveArmed.contains(true) && queue.isEmpty && connections.isSettled {
                break
            }
            if core.phase == .flushing && now >= core.stopDeadline {
                // Out of time: still hand the last sends to the kernel and collect what completed.
                try? ring.submitAndWait(completions: 0, timeoutNanoseconds: 0, minimumWaitMicroseconds: 0)
                while let completion = ring.nextCompletion() { handle(completion, now: now) }
                if !listeners.isEmpty {
                    // A receive whose cancellation has not come yet takes nothing more: with
                    // DEFER_TASKRUN it would only do so inside a wait, and there is none left.
                    // So what the listeners hold can still be counted before they close.
                    countKernelDrops(now: now)
                    WorkerSetup.closeListeners(&listeners, core: &core)
                    forgetListeners()
                }
                break
            }
        }
        countKernelDrops(now: now)
        // Queued behind a chain still in flight, or held back by a full submission queue: never
        // handed to the kernel, so never sent, not in flight.
        for slot in sends.queuedSlots { core.withdrawSend(slot: slot) }
        let end = MonotonicClock.nanoseconds()
        connections.finish(now: end, into: &core)
        let counters = core.finish(unrelayedDatagrams: queue.count, sendsInFlight: sends.inFlight, now: end)
        settings.routing.unsubscribe(control.wakeup)
        for receipt in drainReceipts { receipt.workerRefused() }
        if sends.inFlight > 0 || receiveArmed.contains(true) {
            // The kernel may still use this memory; keeping it mapped is the safe choice.
            buffers.keepMappedAfterDestruction()
            core.keepSendBuffersMapped()
        }
        ring.close()
        return counters
    }

    /// Applies every queued command in order: the listener commands here, the rest in the core.
    /// A listener added once the core stops receiving is closed at once (its receipt refused).
    private mutating func applyCommands(now: UInt64) {
        guard control.hasPending else { return }
        for (command, receipt) in control.take() {
            switch command {
            case .addListener(let id, let handOver):
                guard core.phase == .running, !core.isStopRequested, let socket = handOver.take() else {
                    receipt?.workerRefused()
                    continue
                }
                core.nameListener(id: id, label: WorkerSetup.label(socket.localAddress))
                listeners.append(socket)
                listenerIDs.append(id)
                receiveArmed.append(false)
                cancelWanted.append(false)
                draining.append(false)
                drops.append()
                receipt?.workerApplied()
            case .removeListener(let id):
                guard core.phase != .flushing, let index = listenerIDs.firstIndex(of: id) else {
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

    /// Moves each listener being removed on: while its socket holds datagrams its receive stays
    /// armed (re-armed if the kernel ended it); once it holds none its receive is cancelled;
    /// once that cancellation has completed (the receive reported its end) it closes, taking
    /// nothing more. The removals are answered once none is left.
    private mutating func followDrains(now: UInt64) {
        var index = listeners.count - 1
        while index >= 0 {
            defer { index -= 1 }
            guard draining[index] else { continue }
            if listeners[index].hasPendingDatagram { continue }
            if receiveArmed[index] {
                // Connected to itself, it takes nothing new: what it held is in the buffers.
                // (Asked again each turn until the receive reports its end; a cancellation
                // that finds it gone completes as a `.cancel` CQE, ignored.)
                cancelWanted[index] = true
                continue
            }
            core.countKernelDrops(drops.newDrops(listener: index, counter: listeners[index].kernelDrops))
            _ = listeners.remove(at: index)
            listenerIDs.remove(at: index)
            receiveArmed.remove(at: index)
            cancelWanted.remove(at: index)
            draining.remove(at: index)
            drops.remove(at: index)
        }
        if !draining.contains(true) {
            for receipt in drainReceipts { receipt.workerApplied() }
            drainReceipts.removeAll()
        }
    }

    /// Answers the removals waiting once a stop closed every listener: they closed with the
    /// others. (The per-listener receive states stay: a cancellation may still be on its way.)
    private mutating func forgetListeners() {
        for index in draining.indices { draining[index] = false }
        for receipt in drainReceipts { receipt.workerApplied() }
        drainReceipts.removeAll()
    }

    /// Counts what the kernel dropped at the listening sockets since the last reading.
    private mutating func countKernelDrops(now: UInt64) {
        for index in listeners.indices {
            core.countKernelDrops(drops.newDrops(listener: index, counter: listeners[index].kernelDrops))
        }
        drops.wasRead(now: now)
    }

    private var anyListenerHasPending: Bool {
        for index in listeners.indices where listeners[index].hasPendingDatagram { return true }
        return false
    }

    /// Arms a multishot receive on every listener that has none, while receiving goes on.
    private mutating func armReceives() {
        guard core.phase != .flushing, buffers.available > 0 else { return }
        for index in receiveArmed.indices where !receiveArmed[index] && !submissionsDeferred {
            do throws(Errno) {
                try ring.armMultishotReceive(on: listeners[index], buffers: buffers, userData: UserData(.receive, index: listenerIDs[index]))
                receiveArmed[index] = true
            } catch { deferSubmissions() }
        }
    }

    /// Arms the control event's poll when it is wanted: at start and again after each time it
    /// fired (a one-shot poll, re-armed after the event was reset, so nothing is missed and a
    /// signalled event never fires twice).
    private mutating func armPolls() {
        if wakeupPollWanted && !submissionsDeferred {
            do throws(Errno) {
                try ring.armPoll(descriptor: control.wakeup.descriptor, userData: UserData(.wakeup))
                wakeupPollWanted = false
            } catch { deferSubmissions() }
        }
    }

    /// Submits the cancellation of every receive that is still to be cancelled.
    private mutating func submitCancels() {
        for index in cancelWanted.indices where cancelWanted[index] && !submissionsDeferred {
            guard receiveArmed[index] else {
                cancelWanted[index] = false
                continue
            }
            do throws(Errno) {
                try ring.cancel(UserData(.receive, index: listenerIDs[index]), userData: UserData(.cancel))
                cancelWanted[index] = false
            } catch { deferSubmissions() }
        }
    }

    /// Counts a request that found the submission queue full with the kernel taking none of
    /// it, and prepares nothing more before the next wait; what was not prepared is prepared
    /// again then.
    private mutating func deferSubmissions() {
        core.countSubmissionDeferred()
        submissionsDeferred = true
    }

    /// How many completions to wait for, for how long, and the minimum wait.
    private func waitPlan(now: UInt64) -> (UInt32, UInt64?, UInt32) {
        func until(_ deadline: UInt64) -> UInt64 { deadline > now ? deadline - now : 0 }
        let flushDue = earliest(core.nextDeadline(now: now), connections.nextConfirmation).map(until)
        let minimumWait = settings.minimumWaitMicroseconds
        // Waiting for several completions is only safe with a minimum wait to cut it short;
        // without one the worker would sit on a lone datagram (or its stop signal).
        let batching = ring.supportsMinimumWait && minimumWait > 0
        // The sends linked after a chain's first are started by the kernel's deferred task work,
        // which a wait runs only as far as the completions it waits for: waiting for every send
        // in flight lets whole chains complete in this wait (a send held up by a full socket
        // buffer is cut short by the minimum wait).
        let sendsInFlight = UInt32(clamping: sends.inFlight)
        switch core.phase {
        case .running:
            if !queue.isEmpty || core.pendingPool != nil || submissionsDeferred {
                // Waiting for sends to free slots (or for room in the submission queue); the
                // flush deadline still bounds the wait.
                let bound = min(flushDue ?? settings.flushIntervalNanoseconds, 1_000_000)
                return batching ? (max(1, sendsInFlight), bound, minimumWait) : (1, bound, 0)
            }
            if receiveEnded {
                // The receive was just re-armed: take the next completion as it comes.
                return (1, flushDue ?? Self.idleWaitNanoseconds, 0)
            }
            let batch = batching ? max(Self.completionBatch, sendsInFlight) : 1
            return (batch, flushDue ?? Self.idleWaitNanoseconds, minimumWait)
        case .draining:
            return (queue.isEmpty ? 0 : 1, min(until(core.stopDeadline), 1_000_000), 0)
        case .flushing:
            return (1, min(until(core.stopDeadline), flushDue ?? .max), 0)
        }
    }

    /// Handles one CQE; a result is data, each case with its reason.
    @inline(__always)
    private mutating func handle(_ completion: Completion, now: UInt64) {
        switch completion.userData.kind {
        case .receive:
            if completion.result >= 0, let bufferID = completion.bufferID {
                buffers.take(bufferID)
                queue.push(bufferID: bufferID, result: completion.result, listener: completion.userData.index)
                receivedThisTurn = true
            } else if completion.result == 0 {
                // An empty datagram: multishot `recv` takes no buffer for it (and ends). It has
                // no line to keep in order with the queued datagrams, so it is counted now.
                countEmptyDatagram(listener: completion.userData.index, now: now)
                receivedThisTurn = true
            } else if completion.result < 0 {
                switch -completion.result {
                case ENOBUFS:
                    // Every buffer is held: re-armed once some are recycled this turn.
                    core.countBufferRingExhausted()
                case ECANCELED:
                    break  // stopping
                default:
                    core.countReceiveError()
                }
            }
            if !completion.hasMore {
                if let index = listenerIDs.firstIndex(of: completion.userData.index) { receiveArmed[index] = false }
                if completion.result != -ECANCELED && core.phase != .flushing {
                    core.countReceiveRearm()
                    receiveEnded = true
                }
            }
        case .send:
            let slot = Int(completion.userData.index)
            // An earlier packet's refusal, pending on the socket, failed this send untransmitted
            // (`retriesSend`), or the kernel cancelled it unsent: it goes again, in its place.
            let retry = core.retriesSend(slot: slot, result: completion.result)
            guard sends.completed(slot: slot, result: retry ? -ECANCELED : completion.result) else {
                connections.withdrawn(slot: slot, backend: core.sendBuffers.backend(of: slot))
                break
            }
            connections.record(core.sendCompleted(slot: slot, result: completion.result), slot: slot, now: now)
        case .wakeup:
            // A command or a pool publication: taken this turn (`WorkerControl.apply`,
            // `beginTurn`); the poll is re-armed before the next wait, after the reset, so none
            // is missed, and one that comes while stopping wakes the worker once, not every turn.
            control.wakeup.reset()
            wakeupPollWanted = true
        case .cancel:
            break  // the cancelled receive reports its own end
        case .routing:
            assertionFailure("no routing poll is armed: publications fire the control event")
        case nil:
            assertionFailure("completion with unknown user_data \(completion.userData)")
        }
    }

    /// Counts an empty datagram received. Kept out of line: `handle` runs for every CQE, and
    /// this rare path would otherwise inline a second copy of the core's whole receive path.
    @inline(never)
    private mutating func countEmptyDatagram(listener: UInt32, now: UInt64) {
        core.receive(.datagram(length: 0), RawSpan(), listener: listener, now: now)
    }

    /// Relays queued datagrams, oldest first, while the core can take one more.
    @inline(__always)
    private mutating func relayQueued(now: UInt64) {
        while core.canAcceptDatagram, let entry = queue.pop() {
            Self.relay(entry, from: buffers, into: &core, now: now)
            buffers.recycle(entry.bufferID)
        }
    }

    @inline(__always)
    private static func relay(
        _ entry: ReceiveQueue.Entry, from buffers: borrowing ProvidedBufferRing, into core: inout RelayCore, now: UInt64
    ) {
        buffers.withPayload(of: entry.bufferID, result: entry.result) { payload, bytes in
            core.receive(payload, bytes, listener: entry.listener, now: now)
        }
    }

    /// Queues every packet the core hands out behind the earlier ones for its backend, and
    /// turns what can go into `send` SQEs, submitted with the next wait.
    @inline(__always)
    private mutating func queueReadySends() {
        sends.follow(backends: core.pool.count, slots: core.sendBuffers.capacity)
        while let (slot, backend) = core.nextOutgoing() {
            sends.enqueue(slot: slot, backend: backend)
        }
        guard !submissionsDeferred else { return }
        do throws(Errno) {
            try sends.submit(to: ring, from: core.sendBuffers, over: &connections)
        } catch { deferSubmissions() }
    }

}
