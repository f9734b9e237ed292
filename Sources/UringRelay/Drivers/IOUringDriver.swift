import BasicContainers
import Glibc
import RelayKernel

/// The io_uring driver's transport steps (`WorkerTransport`, run by `WorkerLoop`): feeds a
/// `RelayCore` from one ring, owned by one worker thread.
///
/// A multishot `recv` stays armed on every listener, taking buffers from one
/// provided-buffer ring, a multishot `accept` on every TCP ingest listening socket, and a
/// multishot `recv` on every TCP ingest connection, taking buffers from a group of their own
/// (`StreamBufferRing`, receive bundles where the kernel has them); sends are `send` SQEs on connected backend sockets, submitted with the
/// next wait, in order per backend (`OrderedSends`). Its wait step publishes recycled buffers,
/// re-arms any receive the kernel ended, submits every queued send and waits for completions
/// in one `io_uring_enter2`, then takes every CQE off the queue; its receive step hands the
/// queued datagrams to the core; its send step queues the sends the core hands out for the
/// next wait's submit.
///
/// A request that finds the submission queue full is not lost: the queue is submitted to make
/// room, and if the kernel takes none of it (short of memory, completions overflowing) the
/// request is counted (`submissions_deferred`), the turn ends and it is made again next turn.
///
/// The kernel ends a multishot receive at every empty datagram (its zero-byte payload reads as
/// the end of a stream). The turn after such an end does not wait out the minimum wait: it
/// re-arms and returns at the first completion, so an empty datagram costs one extra
/// `io_uring_enter`, never 250 µs of a disarmed socket.
struct IOUringDriver: ~Copyable {
    // Declared in teardown order (`close`): the ring exits before the buffers it may still
    // write into are unmapped.
    private let ring: Ring
    private var buffers: ProvidedBufferRing
    /// The TCP receive group until the first wait hands it to the TCP ingest
    /// (`TCPIngest.readByCompletions`); empty without TCP listeners at start.
    private var streamBuffers: StreamBufferRing
    /// Whether the connections' receives are armed with `IORING_RECVSEND_BUNDLE`: the kernel
    /// has them (`IORING_FEAT_RECVSEND_BUNDLE`) and `--tcp-receive` is `auto`.
    private let bundles: Bool
    private var queue: ReceiveQueue
    /// The CQEs other than datagrams that one look at the completion queue took, to be handled.
    private let others = CompletionRun(capacity: 64)
    private var sends: OrderedSends
    /// `--min-wait`, lengthened at low arrival rates.
    private var adaptiveWait: AdaptiveMinimumWait
    /// The receive buffers that circulate while the adapted wait is at `--min-wait` (see
    /// `circulatingBuffers`): half of them, or all when the wait cannot adapt.
    private let buffersAtFloor: Int
    private let flushIntervalNanoseconds: UInt64
    private var receiveEnded = false
    private var receivedThisTurn = false
    /// Whether the control event's poll is to be armed (again) before the next wait.
    private var wakeupPollWanted = true
    /// Whether the poll on the TCP ingest's epoll descriptor is armed.
    private var ingestPollArmed = false
    /// A request found no room in the submission queue since the last wait: nothing more is
    /// prepared before the next one, which is kept short.
    private var submissionsDeferred = false

    /// Completions a waiting worker asks for before the minimum wait lets it go with fewer.
    private static let completionBatch: UInt32 = 32
    /// The wait bound when no batch is open. Without a bound the kernel ends a minimum wait
    /// that saw no completion with `ETIME`, which would wake an idle worker every 250 µs; with
    /// one it goes on waiting for the first completion.
    private static let idleWaitNanoseconds: UInt64 = 1_000_000_000

    /// Opens the ring and its provided-buffer ring for `worker`. Call on the worker's own
    /// thread: the ring accepts submissions only from the thread that created it
    /// (`SINGLE_ISSUER`).
    ///
    /// - Throws: `SystemCallError` naming the step that failed (a ring already made exits).
    init(opening worker: borrowing WorkerState) throws(SystemCallError) {
        let settings = worker.settings
        let bufferCount = settings.receiveBuffers
        let sizing = settings.ringSizing(backendCount: worker.core.pool.count)
        assert(sizing.sendSlots == worker.core.sendBuffers.capacity, "the send slots and the ring are sized apart")
        let ring: Ring
        do throws(Errno) { ring = try Ring(sizing: sizing) } catch {
            throw SystemCallError("io_uring_queue_init", "", error)
        }
        let buffers: ProvidedBufferRing
        do throws(SystemCallError) {
            buffers = try Self.datagramGroup(ring: ring, count: bufferCount, payloadBytes: settings.maxDatagramBytes)
        } catch {
            ring.close()
            throw error
        }
        let streamBuffers: StreamBufferRing
        do throws(SystemCallError) {
            streamBuffers = try Self.streamGroup(ring: ring, count: settings.tcpReceiveGroupBuffers, bufferBytes: settings.tcpReceiveBufferBytes)
        } catch {
            ring.close()
            throw error
        }
        self.streamBuffers = streamBuffers
        let kernelBundles = ring.supportsReceiveBundles
        bundles = settings.tcpReceive == .auto && kernelBundles
        sends = OrderedSends(backends: worker.core.sendTargetCount, slots: worker.core.sendBuffers.capacity)
        adaptiveWait = AdaptiveMinimumWait(
            floorMicroseconds: settings.minimumWaitMicroseconds, flushIntervalNanoseconds: settings.flushIntervalNanoseconds,
            receiveBuffers: bufferCount, socketBufferBytes: worker.listeners.receiveBufferBytes)
        buffersAtFloor = Self.buffersAtFloor(count: bufferCount, adaptiveWait: adaptiveWait)
        flushIntervalNanoseconds = settings.flushIntervalNanoseconds
        self.ring = ring
        self.buffers = buffers
        queue = ReceiveQueue(capacity: bufferCount)
    }

    /// How many of `count` receive buffers circulate while the adapted wait is at its floor:
    /// half (at least one) when the wait can adapt, else all.
    ///
    /// The buffers are sized for the adapted wait: one wait aims to gather up to half of them
    /// (`AdaptiveMinimumWait.targetDatagrams`) and the wait under way when the rate jumps may
    /// take up to its ceiling's worth, so all circulate while the wait is above its floor. At the
    /// floor the worker keeps up with a high rate or drains a backlog: every turn the kernel
    /// fills all the buffers it has, in ring order, and 256 cycled through the CPU cache cost a
    /// W2 drain (1 400-byte datagrams) 4-13 % more CPU per line than 128 (six of six comparisons).
    /// Half of the default 256 is the 128 the relay had before the wait adapted, so a saturated
    /// worker receives as it did then. A wait that cannot adapt (`--min-wait 0`, a small socket
    /// buffer: its ceiling is its floor) keeps every buffer `--receive-buffers` asks for.
    static func buffersAtFloor(count: Int, adaptiveWait: AdaptiveMinimumWait) -> Int {
        adaptiveWait.ceilingMicroseconds > adaptiveWait.floorMicroseconds ? max(1, count / 2) : count
    }

    /// The receive buffers to circulate from this wait on: all while the adapted wait is above
    /// `--min-wait`, `buffersAtFloor` at it (`ProvidedBufferRing.publish(circulating:)`: fewer
    /// as buffers come back, more at once).
    @inline(__always)
    private var circulatingBuffers: Int {
        adaptiveWait.microseconds > adaptiveWait.floorMicroseconds ? buffers.count : buffersAtFloor
    }

    /// The UDP receive group, buffer group 0.
    private static func datagramGroup(ring: borrowing Ring, count: Int, payloadBytes: Int) throws(SystemCallError) -> ProvidedBufferRing {
        do throws(Errno) { return try ProvidedBufferRing(ring: ring, groupID: 0, count: count, payloadBytes: payloadBytes) } catch {
            throw SystemCallError("io_uring_register_buf_ring", "\(count) buffers", error)
        }
    }

    /// The TCP receive group, buffer group 1 (none when `count` is 0: no TCP listener at start).
    private static func streamGroup(ring: borrowing Ring, count: Int, bufferBytes: Int) throws(SystemCallError) -> StreamBufferRing {
        guard count > 0 else { return StreamBufferRing() }
        do throws(Errno) { return try StreamBufferRing(ring: ring, groupID: 1, count: count, bufferBytes: bufferBytes) } catch {
            throw SystemCallError("io_uring_register_buf_ring", "\(count) TCP buffers", error)
        }
    }

    /// The facts worth logging once at start-up.
    func facts(_ worker: borrowing WorkerState) -> WorkerFacts {
        WorkerFacts(
            driver: .uring, listeners: worker.listeners.boundAddresses, receiveBufferBytes: worker.listeners.receiveBufferBytes,
            ringFlags: ring.setupFlagNames, minimumWait: ring.supportsMinimumWait,
            receiveBuffers: buffers.count, receiveBufferSize: buffers.bufferBytes,
            sendSlots: worker.core.sendBuffers.capacity, adaptiveWaitCeilingMicroseconds: adaptiveWait.ceilingMicroseconds,
            tcpListeners: worker.tcp.boundAddresses,
            tcpReads: streamBuffers.isRegistered || worker.tcp.completionReads ? (bundles ? .bundles : .multishot) : .epoll)
    }
}

extension IOUringDriver: WorkerTransport {
    /// Publishes recycled buffers, re-arms what the kernel ended, submits what is prepared and
    /// waits in one `io_uring_enter2`, then takes every CQE off the queue.
    ///
    /// - Throws: `SystemCallError` if the ring itself fails.
    @inline(__always)
    mutating func wait(_ worker: inout WorkerState, now: UInt64) throws(SystemCallError) {
        buffers.publish(circulating: circulatingBuffers)
        armPoll(&worker)
        armIngestPoll(&worker)
        armAccepts(&worker, now: now)
        armStreamReceives(&worker)
        armReceives(&worker)
        submitCancels(&worker)
        submitAcceptCancels(&worker)
        let (completions, timeout, minimumWait) = waitPlan(&worker, now: now)
        receiveEnded = false
        do {
            try ring.submitAndWait(
                completions: completions, timeoutNanoseconds: timeout, minimumWaitMicroseconds: minimumWait)
        } catch { throw SystemCallError("io_uring_enter", "", error) }
        submissionsDeferred = false
        receivedThisTurn = false
        let taken = MonotonicClock.nanoseconds()
        let queuedBefore = queue.count
        handleCompletions(&worker, now: taken)
        adaptiveWait.observe(datagrams: queue.count &- queuedBefore, end: taken)
    }

    @inline(__always)
    mutating func receive(_ worker: inout WorkerState, now: UInt64) -> Bool {
        relayQueued(&worker.core, now: now)
        let streams = worker.core.phase != .flushing && worker.tcp.relayReceived(core: &worker.core, now: now)
        // Only a draining core asks; the peek is a system call, not paid while running.
        return worker.core.phase == .draining && (!queue.isEmpty || receivedThisTurn || streams || worker.listeners.anyPending)
    }

    /// None: the receive queue holds datagrams of listeners that may have closed; they are
    /// relayed all the same (counted under their listener's id).
    var unrelayedListener: UInt32? { nil }

    mutating func listenersChanged(_ worker: borrowing WorkerState) {}

    /// Cancels every armed receive; the listeners close once every cancellation has completed.
    mutating func stopReceiving(_ worker: inout WorkerState) {
        for index in worker.listeners.indices { worker.listeners[index].cancelWanted = worker.listeners[index].receiveArmed }
        submitCancels(&worker)
    }

    @inline(__always)
    mutating func send(_ worker: inout WorkerState, now: UInt64) { queueReadySends(&worker, now: now) }

    var sendsPending: Int { sends.count }

    func isIdle(_ worker: borrowing WorkerState) -> Bool {
        sends.isEmpty && queue.isEmpty && !worker.listeners.anyReceiveArmed && !worker.tcp.anyAcceptArmed
            && !worker.tcp.anyReceiveArmed
    }

    /// Still hands the last sends to the kernel and collects what completed.
    mutating func lastCompletions(_ worker: inout WorkerState, now: UInt64) {
        try? ring.submitAndWait(completions: 0, timeoutNanoseconds: 0, minimumWaitMicroseconds: 0)
        handleCompletions(&worker, now: now)
    }

    mutating func finish(_ worker: inout WorkerState) -> (unrelayed: Int, inFlight: Int) {
        // Queued behind a chain still in flight, or held back by a full submission queue: never
        // handed to the kernel, so never sent, not in flight.
        for slot in sends.queuedSlots { worker.core.withdrawSend(slot: slot) }
        return (queue.count, sends.inFlight)
    }

    /// Exits the ring first (`io_uring_queue_exit`), then unmaps its buffers. When a send is
    /// still in flight or a receive's end never came (a stop out of time, a failed ring), the
    /// kernel may still write into the receive buffers or read the send buffers: both are kept
    /// mapped.
    consuming func close(_ worker: inout WorkerState) {
        if worker.listeners.anyReceiveArmed { cancelReceives(&worker) }
        // A TCP connection's receive whose end never came may still write into its group.
        if worker.tcp.anyReceiveArmed { worker.tcp.keepBuffersMapped() }
        if sends.inFlight > 0 || worker.listeners.anyReceiveArmed || worker.listeners.closedWithReceiveArmed {
            buffers.keepMappedAfterDestruction()
            worker.core.keepSendBuffersMapped()
        }
        ring.close()
        let buffers = self.buffers
        _ = consume buffers
    }
}

extension IOUringDriver {
    /// The longest a worker that ends with receives still armed (its wait failed) waits for
    /// their cancellations before the ring exits.
    private static let cancelBeforeExitNanoseconds: UInt64 = 100_000_000

    /// Cancels every receive still armed and waits, at most `cancelBeforeExitNanoseconds`, for
    /// their ends, so the ring rarely exits with a receive that may still write into its
    /// buffers (a worker whose wait failed). What completes meanwhile is not counted any more:
    /// the counters were taken.
    private mutating func cancelReceives(_ worker: inout WorkerState) {
        submissionsDeferred = false
        for index in worker.listeners.indices { worker.listeners[index].cancelWanted = worker.listeners[index].receiveArmed }
        let deadline = MonotonicClock.nanoseconds() &+ Self.cancelBeforeExitNanoseconds
        while worker.listeners.anyReceiveArmed {
            submitCancels(&worker)
            let now = MonotonicClock.nanoseconds()
            guard now < deadline else { return }
            do throws(Errno) {
                try ring.submitAndWait(completions: 1, timeoutNanoseconds: deadline - now, minimumWaitMicroseconds: 0)
            } catch { return }  // the ring itself fails: its buffers stay mapped
            submissionsDeferred = false
            handleCompletions(&worker, now: now)
        }
    }

    /// Arms a multishot receive on every listener that has none, while receiving goes on.
    private mutating func armReceives(_ worker: inout WorkerState) {
        guard worker.core.phase != .flushing, buffers.available > 0 else { return }
        for index in worker.listeners.indices where !worker.listeners[index].receiveArmed && !submissionsDeferred {
            do throws(Errno) {
                try ring.armMultishotReceive(
                    on: worker.listeners[index].socket, buffers: buffers, userData: UserData(.receive, index: worker.listeners[index].id))
                worker.listeners[index].receiveArmed = true
            } catch { deferSubmissions(&worker.core) }
        }
    }

    /// Arms the control event's poll when it is wanted: at start and again after each time it
    /// fired (a one-shot poll, re-armed after the event was reset, so nothing is missed and a
    /// signalled event never fires twice).
    private mutating func armPoll(_ worker: inout WorkerState) {
        if wakeupPollWanted && !submissionsDeferred {
            do throws(Errno) {
                try ring.armPoll(descriptor: worker.control.wakeup.descriptor, userData: UserData(.wakeup))
                wakeupPollWanted = false
            } catch { deferSubmissions(&worker.core) }
        }
    }

    /// Arms a one-shot poll on the TCP ingest's epoll descriptor (its connections: the
    /// listening sockets have multishot accepts, `armAccepts`) while receiving goes on; re-armed after each time it fired and the ready
    /// ones were served (epoll is level-triggered: what was left unread fires it again).
    private mutating func armIngestPoll(_ worker: inout WorkerState) {
        // Read by completions, nothing is in the epoll set (the accepts are multishot too).
        guard !ingestPollArmed, !submissionsDeferred, worker.core.phase != .flushing, !worker.tcp.completionReads,
              let descriptor = worker.tcp.pollDescriptor else { return }
        do throws(Errno) {
            try ring.armPoll(descriptor: descriptor, userData: UserData(.ingestPoll))
            ingestPollArmed = true
        } catch { deferSubmissions(&worker.core) }
    }

    /// Arms a multishot accept on every TCP listening socket that has none while the core runs
    /// (the first time, the listening sockets leave the epoll set); once it stops running, the
    /// listening sockets stop listening and their accepts are cancelled.
    private mutating func armAccepts(_ worker: inout WorkerState, now: UInt64) {
        worker.tcp.acceptByCompletions()
        guard worker.core.phase == .running else {
            if worker.tcp.accepting { worker.tcp.stopAccepting(core: &worker.core, now: now) }
            return
        }
        for index in worker.tcp.listeners.indices where worker.tcp.wantsAccept(at: index, now: now) && !submissionsDeferred {
            do throws(Errno) {
                try ring.armMultishotAccept(on: worker.tcp.listeners[index].socket, userData: UserData(.accept, index: worker.tcp.listeners[index].id))
                worker.tcp.armed(at: index)
            } catch { deferSubmissions(&worker.core) }
        }
    }

    /// Hands the TCP receive group to the TCP ingest before the first wait (its connections are
    /// then read by multishot receives), publishes the buffers it recycled, arms the receive
    /// of each connection that wants one and submits the cancellations of those closed while
    /// armed (`TCPIngest.armReceives`, `submitReceiveCancels`).
    private mutating func armStreamReceives(_ worker: inout WorkerState) {
        if streamBuffers.isRegistered { worker.tcp.readByCompletions(&streamBuffers, bundles: bundles) }
        guard worker.tcp.completionReads else { return }
        worker.tcp.publishBuffers()
        guard !submissionsDeferred else { return }
        do throws(Errno) {
            try worker.tcp.submitReceiveCancels(on: ring)
            if worker.core.phase != .flushing { try worker.tcp.armReceives(on: ring) }
        } catch { deferSubmissions(&worker.core) }
    }

    /// Submits the cancellation of every retiring TCP listener's accept (a reload removed it,
    /// or the worker stopped accepting); each listener closes once its accept's end comes.
    private mutating func submitAcceptCancels(_ worker: inout WorkerState) {
        for index in worker.tcp.retiring.indices where worker.tcp.retiring[index].cancelWanted && !submissionsDeferred {
            do throws(Errno) {
                try ring.cancel(UserData(.accept, index: worker.tcp.retiring[index].id), userData: UserData(.cancel))
                worker.tcp.cancelSubmitted(at: index)
            } catch { deferSubmissions(&worker.core) }
        }
    }

    /// Submits the cancellation of every receive that is still to be cancelled.
    private mutating func submitCancels(_ worker: inout WorkerState) {
        for index in worker.listeners.indices where worker.listeners[index].cancelWanted && !submissionsDeferred {
            guard worker.listeners[index].receiveArmed else {
                worker.listeners[index].cancelWanted = false
                continue
            }
            do throws(Errno) {
                try ring.cancel(UserData(.receive, index: worker.listeners[index].id), userData: UserData(.cancel))
                worker.listeners[index].cancelWanted = false
            } catch { deferSubmissions(&worker.core) }
        }
    }

    /// Counts a request that found the submission queue full with the kernel taking none of
    /// it, and prepares nothing more before the next wait; what was not prepared is prepared
    /// again then.
    private mutating func deferSubmissions(_ core: inout RelayCore) {
        core.countSubmissionDeferred()
        submissionsDeferred = true
    }

    /// How many completions to wait for, for how long, and the minimum wait.
    ///
    /// `worker` is `inout` though only read, and the three deadlines asked of its parts (the
    /// core, the connections, TCP ingest) are inlined: with a borrowed state and out-of-line
    /// getters each part was copied out first, three `memcpy` calls a loop turn.
    private func waitPlan(_ worker: inout WorkerState, now: UInt64) -> (UInt32, UInt64?, UInt32) {
        func until(_ deadline: UInt64) -> UInt64 { deadline > now ? deadline - now : 0 }
        let flushDue = earliest(earliest(worker.core.nextDeadline(now: now), worker.connections.nextConfirmation), worker.tcp.nextDeadline).map(until)
        let minimumWait = adaptiveWait.minimum(flushDue: flushDue)
        // Waiting for several completions is only safe with a minimum wait to cut it short;
        // without one the worker would sit on a lone datagram (or its stop signal).
        let batching = ring.supportsMinimumWait && minimumWait > 0
        // The sends linked after a chain's first are started by the kernel's deferred task work,
        // which a wait runs only as far as the completions it waits for: waiting for every send
        // in flight lets whole chains complete in this wait (a send held up by a full socket
        // buffer is cut short by the minimum wait).
        let sendsInFlight = UInt32(clamping: sends.inFlight)
        // Parked TCP bytes the core has room for are relayed next turn without waiting.
        let streamsReady = worker.tcp.hasReady
        if streamsReady && worker.core.phase != .flushing && worker.core.canAcceptDatagram { return (0, 0, 0) }
        switch worker.core.phase {
        case .running:
            if !queue.isEmpty || streamsReady || worker.core.hasPendingPool || submissionsDeferred {
                // Waiting for sends to free slots (or for room in the submission queue); the
                // flush deadline still bounds the wait.
                let bound = min(flushDue ?? flushIntervalNanoseconds, 1_000_000)
                return batching ? (max(1, sendsInFlight), bound, minimumWait) : (1, bound, 0)
            }
            if receiveEnded {
                // The receive was just re-armed: take the next completion as it comes.
                return (1, flushDue ?? Self.idleWaitNanoseconds, 0)
            }
            let batch = batching ? max(Self.completionBatch, sendsInFlight) : 1
            return (batch, flushDue ?? Self.idleWaitNanoseconds, minimumWait)
        case .draining:
            return (queue.isEmpty && !streamsReady ? 0 : 1, min(until(worker.core.stopDeadline), 1_000_000), 0)
        case .flushing:
            return (1, min(until(worker.core.stopDeadline), flushDue ?? .max), 0)
        }
    }

    /// Handles every CQE ready, a batch at a time: a batch's queue slots go back to the kernel
    /// in one store once it is handled, and whatever the kernel posted meanwhile (a submit to
    /// make room enters the kernel) comes in the next batch. The buffers of the datagrams
    /// parked are counted as held once, after the last batch.
    @inline(__always)
    private mutating func handleCompletions(_ worker: inout WorkerState, now: UInt64) {
        let queuedBefore = queue.count
        while true {
            var batch = ring.readyCompletions()
            if batch.isEmpty { break }
            // The common CQE, a datagram whose receive stays armed, is parked without the switch
            // over every kind; `handle`, which takes every other CQE, would park it the same way.
            // A call parks its datagrams before `handle` sees the other CQEs it took, even one
            // that came first: harmless, since parking only queues a datagram and `handle` reads
            // nothing of the queue. The other CQEs keep their order, and one of a receive (an
            // end, an error) ends the call, so it is handled before a later datagram is parked.
            repeat {
                let taken = queue.park(from: ring, in: &batch, others: others)
                for index in 0..<taken { handle(others[index], worker: &worker, now: now) }
            } while !batch.isRead
            ring.release(batch)
        }
        let parked = queue.count &- queuedBefore
        if parked > 0 {
            buffers.take(count: parked)
            receivedThisTurn = true
        }
    }

    /// Handles one CQE; a result is data, each case with its reason.
    @inline(__always)
    private mutating func handle(_ completion: Completion, worker: inout WorkerState, now: UInt64) {
        switch completion.userData.kind {
        case .receive:
            if completion.result >= 0, let bufferID = completion.bufferID {
                park(bufferID, of: completion)
            } else if completion.result == 0 {
                // An empty datagram: multishot `recv` takes no buffer for it (and ends). It has
                // no line to keep in order with the queued datagrams, so it is counted now.
                Self.countEmptyDatagram(into: &worker.core, listener: completion.userData.index, now: now)
                receivedThisTurn = true
            } else if completion.result < 0 {
                switch -completion.result {
                case ENOBUFS:
                    // Every circulating buffer is held (at the wait's floor half are reserved,
                    // `circulatingBuffers`): re-armed once some are recycled this turn.
                    worker.core.countBufferRingExhausted()
                case ECANCELED:
                    break  // stopping
                default:
                    worker.core.countReceiveError()
                }
            }
            if !completion.hasMore {
                if let index = worker.listeners.index(of: completion.userData.index) { worker.listeners[index].receiveArmed = false }
                if completion.result != -ECANCELED && worker.core.phase != .flushing {
                    worker.core.countReceiveRearm()
                    receiveEnded = true
                }
            }
        case .send:
            let slot = Int(completion.userData.index)
            // An earlier packet's refusal, pending on the socket, failed this send untransmitted
            // (`retriesSend`), or the kernel cancelled it unsent: it goes again, in its place.
            let retry = worker.core.retriesSend(slot: slot, result: completion.result)
            guard sends.completed(slot: slot, result: retry ? -ECANCELED : completion.result) else {
                worker.connections.withdrawn(slot: slot, backend: worker.core.sendBuffers.backend(of: slot))
                break
            }
            worker.connections.record(worker.core.sendCompleted(slot: slot, result: completion.result), slot: slot, now: now)
        case .wakeup:
            // A command or a pool publication: taken this turn (`WorkerControl.apply`,
            // `beginTurn`); the poll is re-armed before the next wait, after the reset, so none
            // is missed, and one that comes while stopping wakes the worker once, not every turn.
            worker.control.wakeup.reset()
            wakeupPollWanted = true
        case .streamSend:
            worker.connections.streamSendCompleted(request: completion.userData.index, result: completion.result, now: now)
        case .streamPoll:
            // Writable, connected, failed or reset: the send step looks at the link again.
            worker.connections.streamPollCompleted(request: completion.userData.index)
        case .ingestPoll:
            // A TCP listener or connection is ready: served after the datagrams this turn.
            ingestPollArmed = false
            worker.tcpReady = true
        case .accept:
            // A connection, an error or the accept's end (`TCPIngest.accepted`).
            worker.tcp.accepted(completion, core: &worker.core, now: now)
        case .streamReceive:
            // A connection's bytes, its end, or its receive's end (`TCPIngest.received`).
            worker.tcp.received(completion, core: &worker.core, now: now)
        case .cancel:
            break  // the cancelled receive or accept reports its own end
        case .routing:
            assertionFailure("no routing poll is armed: publications fire the control event")
        case nil:
            assertionFailure("completion with unknown user_data \(completion.userData)")
        }
    }

    /// Parks a receive completion's filled buffer in the queue, held until relayed (counted as
    /// held, and the turn as having received, by `handleCompletions` for the whole run).
    @inline(__always)
    private mutating func park(_ bufferID: UInt16, of completion: Completion) {
        queue.push(bufferID: bufferID, result: completion.result, listener: completion.userData.index)
    }

    /// Counts an empty datagram received. Kept out of line: `handle` runs for every CQE, and
    /// this rare path would otherwise inline a second copy of the core's whole receive path.
    @inline(never)
    private static func countEmptyDatagram(into core: inout RelayCore, listener: UInt32, now: UInt64) {
        core.receive(.datagram(length: 0), RawSpan(), listener: listener, now: now)
    }

    /// Relays queued datagrams, oldest first, while the core can take one more, then recycles
    /// their buffers together (published with the next wait, as one by one).
    @inline(__always)
    private mutating func relayQueued(_ core: inout RelayCore, now: UInt64) {
        let start = queue.position
        while core.canAcceptDatagram, let entry = queue.pop() {
            Self.relay(entry, from: buffers, into: &core, now: now)
        }
        queue.recycle(poppedSince: start, into: &buffers)
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
    private mutating func queueReadySends(_ worker: inout WorkerState, now: UInt64) {
        sends.follow(backends: worker.core.sendTargetCount, slots: worker.core.sendBuffers.capacity)
        while let (slot, backend) = worker.core.nextOutgoing() {
            if worker.connections.isStream(backend) {
                worker.connections.enqueueStream(slot: slot, backend: backend, core: &worker.core)
            } else {
                sends.enqueue(slot: slot, backend: backend)
            }
        }
        if worker.connections.hasStreams {
            worker.connections.progressStreams(now: now, writes: false)
            submitStreams(&worker)
        }
        guard !submissionsDeferred else { return }
        do throws(Errno) {
            try sends.submit(to: ring, from: worker.core.sendBuffers, over: &worker.connections)
        } catch { deferSubmissions(&worker.core) }
    }

    /// Turns each TCP backend's queued bytes into a `send` SQE (one in flight per link, its
    /// partial result resumed by the next), and arms a writability poll for each link that is
    /// connecting or found its socket full; all submitted with the next wait.
    private mutating func submitStreams(_ worker: inout WorkerState) {
        for index in worker.connections.links.indices where !submissionsDeferred {
            if !Self.submit(&worker.connections.links[index], to: ring) { deferSubmissions(&worker.core) }
        }
        for index in worker.connections.retiredLinks.indices where !submissionsDeferred {
            if !Self.submit(&worker.connections.retiredLinks[index], to: ring) { deferSubmissions(&worker.core) }
        }
    }

    /// Prepares `link`'s next `send` SQE and its writability poll, as it needs them.
    ///
    /// - Returns: `false` when the submission queue was full (what was not prepared is
    ///   prepared again next turn).
    private static func submit(_ link: inout TCPBackendLink, to ring: borrowing Ring) -> Bool {
        if let write = link.takeWrite() {
            do throws(Errno) {
                try ring.sendStream(write.bytes, descriptor: write.descriptor, userData: UserData(.streamSend, index: link.requestIndex))
            } catch {
                link.writeNotSubmitted()
                return false
            }
        }
        if link.needsPoll, let descriptor = link.pollDescriptor {
            do throws(Errno) {
                try ring.armWritablePoll(descriptor: descriptor, userData: UserData(.streamPoll, index: link.requestIndex))
                link.pollArmed()
            } catch { return false }
        }
        return true
    }
}
