import BasicContainers
import Glibc
import RelayKernel

/// The portable driver's transport steps (`WorkerTransport`, run by `WorkerLoop`): feeds a
/// `RelayCore` with `recvmmsg(2)` and sends its packets with
/// `sendmmsg(2)`, for hosts where io_uring is disabled or blocked (most containers' seccomp
/// profiles). Same core, same counters, same stop and pool-change behaviour as the io_uring
/// driver.
///
/// Its wait step: `ppoll` until a listener or the control event is readable or the next
/// deadline comes; its receive step takes datagrams from every listener in batches (several
/// batches while the socket stays full), sending ready packets whenever the send buffers run
/// short; its send step sends what the core hands out. While the listeners
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
struct PortableDriver: ~Copyable {
    private var batch: DatagramBatch
    private var sends: SendBatch
    private var poller: PollSet
    /// The open listeners' ids and descriptors (owned by `WorkerListeners`), for `recvmmsg`
    /// and `ppoll`: rebuilt whenever the listeners change.
    private var receivers: [(id: UInt32, descriptor: Int32)] = []
    /// The control event's descriptor, polled after the listeners'.
    private let wakeupDescriptor: Int32
    /// The TCP ingest's epoll descriptor (its listening sockets and connections), polled after
    /// the control event's: one descriptor however many connections, so the poll set stays
    /// small and is never rebuilt per connection.
    private var ingestDescriptors: [Int32]
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
    /// The poll set's entries for TCP backends' sockets, after the control event's: one per link.
    private var streamEntries = 0
    /// Whether the listeners are still read (until the core stops receiving).
    private var receiving = true
    /// The last turn's receive left more waiting: the next wait is skipped (but every
    /// `busyTurnsPerPoll` turns, when the events are looked at without waiting).
    private var busy = false
    private var busyTurns = 0

    /// Batches taken from one listener per turn before the others get their turn.
    private static let batchesPerTurn = 8
    /// Busy turns between two polls of the control event (a command is seen every turn:
    /// `WorkerControl.hasPending`).
    private static let busyTurnsPerPoll = 16
    /// The wait bound when nothing is due, so a stuck event is never waited on forever.
    private static let idleWaitNanoseconds: UInt64 = 1_000_000_000
    /// The longest one batch of sends waits for room behind a slow backend while running:
    /// what is still unsent then is deferred, tried again first next turn, so the worker sees
    /// a stop or a command within about this long (`StopBoundTests`), not after the link has
    /// carried a whole batch (some 300 ms at 10 Mbit/s).
    static let blockingWaitNanoseconds: UInt64 = 10_000_000

    /// The datagrams one `recvmmsg` takes: half of `--receive-buffers` (at least 1, at most
    /// 256), the buffers an io_uring worker circulates at saturation, which is when a batch
    /// fills. With the default 256 that is the 128 this driver took before the io_uring wait's
    /// adaptation doubled the default, so its cache footprint, its turns and its instruction
    /// counts stay as measured.
    static func batchCount(receiveBuffers: Int) -> Int { min(max(1, receiveBuffers / 2), 256) }

    /// Maps the receive batch for `worker`.
    ///
    /// - Throws: `SystemCallError` naming the step that failed.
    init(opening worker: borrowing WorkerState) throws(SystemCallError) {
        let settings = worker.settings
        do throws(Errno) {
            batch = try DatagramBatch(count: Self.batchCount(receiveBuffers: settings.receiveBuffers), payloadBytes: settings.maxDatagramBytes)
        } catch { throw SystemCallError("mmap", "receive buffers", error) }
        sends = SendBatch(capacity: 256, backends: worker.core.sendTargetCount)
        deferred.reserveCapacity(worker.core.sendBuffers.capacity)
        spare.reserveCapacity(worker.core.sendBuffers.capacity)
        wakeupDescriptor = PollSet.descriptor(of: worker.control.wakeup)
        ingestDescriptors = worker.tcp.pollDescriptor.map { [$0] } ?? []
        receivers = Self.receivers(of: worker.listeners)
        streamEntries = worker.connections.links.count + worker.connections.retiredLinks.count
        poller = PollSet(descriptors: receivers.map(\.descriptor) + [wakeupDescriptor] + ingestDescriptors, writers: streamEntries)
    }

    /// The facts worth logging once at start-up.
    func facts(_ worker: borrowing WorkerState) -> WorkerFacts {
        WorkerFacts(
            driver: .portable, listeners: worker.listeners.boundAddresses, receiveBufferBytes: worker.listeners.receiveBufferBytes,
            ringFlags: [], minimumWait: false, receiveBuffers: batch.count, receiveBufferSize: batch.payloadBytes,
            sendSlots: worker.core.sendBuffers.capacity, tcpListeners: worker.tcp.boundAddresses)
    }

    /// The ids and descriptors of `listeners`, in order.
    private static func receivers(of listeners: borrowing WorkerListeners) -> [(id: UInt32, descriptor: Int32)] {
        var receivers: [(id: UInt32, descriptor: Int32)] = []
        for index in listeners.indices {
            receivers.append((listeners[index].id, PollSet.descriptor(of: listeners[index].socket)))
        }
        return receivers
    }
}

extension PortableDriver: WorkerTransport {
    /// Waits (`ppoll`) for a listener or the control event, or the next deadline; skipped
    /// while the last turn left more waiting, but for a zero-timeout poll every
    /// `busyTurnsPerPoll` turns.
    ///
    /// - Throws: `SystemCallError` if waiting itself fails.
    @inline(__always)
    mutating func wait(_ worker: inout WorkerState, now: UInt64) throws(SystemCallError) {
        guard !busy || busyTurns >= Self.busyTurnsPerPoll else { return }
        if worker.connections.hasStreams || streamEntries > 0 { watchStreams(worker) }
        do throws(Errno) {
            try poller.wait(timeoutNanoseconds: busy ? 0 : waitTimeout(worker, now: now))
        } catch { throw SystemCallError("ppoll", "", error) }
        busyTurns = 0
        // Reset before the commands are taken: one sent after the take fires it again.
        if poller.isReady(receivers.count) { worker.control.wakeup.reset() }
        if !ingestDescriptors.isEmpty && poller.isReady(receivers.count + 1) { worker.tcpReady = true }
    }

    @inline(__always)
    mutating func receive(_ worker: inout WorkerState, now: UInt64) -> Bool {
        if receiving {
            busy = receiveAll(&worker, now: now)
        } else {
            // Once receiving has stopped, what the last batch still holds is relayed all the
            // same (as the io_uring driver relays its queue), not left to be dropped at exit;
            // not busy meanwhile, so a batch waiting for send slots is tried again after the
            // wait (deferred sends are retried every millisecond), not in a spin.
            if batchNext < batchCount { _ = relayBatch(&worker, now: now) }
            busy = false
        }
        busyTurns += busy ? 1 : 0
        return busy
    }

    var unrelayedListener: UInt32? { batchNext < batchCount ? batchListener : nil }

    /// Rebuilds the poll set: the listeners now, the control event, then the TCP backends.
    mutating func listenersChanged(_ worker: borrowing WorkerState) {
        receivers = Self.receivers(of: worker.listeners)
        ingestDescriptors = worker.tcp.pollDescriptor.map { [$0] } ?? []
        streamEntries = worker.connections.links.count + worker.connections.retiredLinks.count
        poller = PollSet(descriptors: receivers.map(\.descriptor) + [wakeupDescriptor] + ingestDescriptors, writers: streamEntries)
    }

    /// Stops reading the listeners; they close in this turn (nothing of theirs is in flight).
    mutating func stopReceiving(_ worker: inout WorkerState) { receiving = false }

    @inline(__always)
    mutating func send(_ worker: inout WorkerState, now: UInt64) { sendReady(&worker, now: now) }

    var sendsPending: Int { deferred.count }

    func isIdle(_ worker: borrowing WorkerState) -> Bool { deferred.isEmpty && batchNext >= batchCount }

    /// Nothing more to collect: every send made has its result.
    mutating func lastCompletions(_ worker: inout WorkerState, now: UInt64) {}

    mutating func finish(_ worker: inout WorkerState) -> (unrelayed: Int, inFlight: Int) {
        for (slot, _) in deferred { worker.core.withdrawSend(slot: slot) }
        return (batchCount - batchNext, 0)
    }

    /// Unmaps the batches (no kernel request outlives a system call here).
    consuming func close(_ worker: inout WorkerState) {}
}

extension PortableDriver {
    /// How long the next wait may last: until the next flush deadline, paced replay or
    /// confirmation; briefly while the stop is draining.
    private func waitTimeout(_ worker: borrowing WorkerState, now: UInt64) -> UInt64 {
        var timeout = earliest(earliest(worker.core.nextDeadline(now: now), worker.connections.nextConfirmation), worker.tcp.nextDeadline).map { $0 > now ? $0 - now : 0 } ?? Self.idleWaitNanoseconds
        switch worker.core.phase {
        case .running:
            break  // the next paced replay is among the core's deadlines
        case .draining:
            timeout = min(timeout, 1_000_000)
        case .flushing:
            // Sends are done when this runs, but for deferred ones; what is left is confirming
            // them, within the budget.
            timeout = min(timeout, worker.core.stopDeadline > now ? worker.core.stopDeadline - now : 0)
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
    private mutating func receiveAll(_ worker: inout WorkerState, now: UInt64) -> Bool {
        guard relayBatch(&worker, now: now) else { return true }
        var full = false
        for receiver in receivers {
            for _ in 0..<Self.batchesPerTurn {
                guard let taken = Self.receive(into: &batch, from: receiver.descriptor) else {
                    worker.core.countReceiveError()
                    break
                }
                (batchNext, batchCount, batchListener) = (0, taken, receiver.id)
                guard relayBatch(&worker, now: now) else { return true }
                if taken < batch.count { break }
                full = true
                // A batch's work takes long on a slow or loaded CPU (a sanitizer, a busy host:
                // 0.3-0.7 s for a turn's batches was seen under ASan): a command waiting (a
                // stop), a stop just asked for or a drain out of time ends the turn here, so a
                // stop's budget starts and ends within one batch of where it should.
                if worker.control.hasPending || worker.core.endsReceiving(now: MonotonicClock.nanoseconds()) { return true }
            }
        }
        return full
    }

    /// Relays the batch's datagrams not yet relayed, sending ready packets whenever the send
    /// slots run short.
    ///
    /// - Returns: `false` when a datagram found no free slot even then (sends that could not
    ///   wait for room): it and the ones after it wait for the next turn.
    private mutating func relayBatch(_ worker: inout WorkerState, now: UInt64) -> Bool {
        while batchNext < batchCount {
            if !worker.core.canAcceptDatagram {
                makeRoom(&worker, now: now)
                if !worker.core.canAcceptDatagram { return false }
            }
            Self.relay(batchNext, of: batch, listener: batchListener, into: &worker.core, now: now)
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
    private mutating func makeRoom(_ worker: inout WorkerState, now: UInt64) {
        sendReady(&worker, now: now)
        worker.connections.follow(&worker.core, sendsInFlight: deferred.count, now: now)
    }

    /// Sends the deferred packets, then every packet the core hands out, in batches, and hands
    /// the results back. Non-blocking once the worker is stopping or a command waits for it.
    private mutating func sendReady(_ worker: inout WorkerState, now: UInt64) {
        if blocked.count != worker.core.sendTargetCount { blocked = Array(repeating: false, count: worker.core.sendTargetCount) }
        for backend in blocked.indices { blocked[backend] = false }
        swap(&deferred, &spare)
        for index in spare.indices { send(spare[index].slot, to: spare[index].backend, worker: &worker, now: now) }
        spare.removeAll(keepingCapacity: true)
        while let (slot, backend) = worker.core.nextOutgoing() { send(slot, to: backend, worker: &worker, now: now) }
        flushSends(worker: &worker, now: now)
        if worker.connections.hasStreams { worker.connections.progressStreams(now: now, writes: true) }
    }

    /// Adds one packet to the send batch, or defers it behind an earlier packet for its backend
    /// that was deferred in this call.
    @inline(__always)
    private mutating func send(_ slot: Int, to backend: Int, worker: inout WorkerState, now: UInt64) {
        if worker.connections.isStream(backend) {
            worker.connections.enqueueStream(slot: slot, backend: backend, core: &worker.core)
            return
        }
        if blocked[backend] {
            deferred.append((slot, backend))
            return
        }
        worker.connections.sending(slot: slot, backend: backend)
        sends.append(slot: slot, backend: backend)
        if sends.isFull { flushSends(worker: &worker, now: now) }
    }

    /// Sends the batch: waiting for room in a full socket buffer at most `blockingWaitNanoseconds`
    /// while running, not at all once a stop is asked for or any command waits (asked before
    /// every batch, so a stop that comes while a turn sends is seen at the next batch).
    private mutating func flushSends(worker: inout WorkerState, now: UInt64) {
        guard sends.count > 0 else { return }
        let nonBlocking = worker.core.isStopRequested || worker.control.hasPending
        // The mirror's sockets (past the pool's) never block: a slow mirror must not hold up the primary.
        sends.send(
            from: worker.core.sendBuffers, to: worker.connections.sockets, nonBlocking: nonBlocking,
            nonBlockingFrom: worker.core.pool.count, waitNanoseconds: Self.blockingWaitNanoseconds)
        for index in 0..<sends.count {
            let slot = sends.slot(index)
            let backend = worker.core.sendBuffers.backend(of: slot)
            if sends.result(index) == -EAGAIN {
                // No room and no waiting for it: sent again later, in order.
                worker.connections.withdrawn(slot: slot, backend: backend)
                deferred.append((slot, backend))
                blocked[backend] = true
                continue
            }
            // A send the batch tried again (an earlier packet's pending refusal failed it) has
            // its second result here.
            let outcome = worker.core.sendCompleted(slot: slot, result: sends.result(index), retried: sends.wasRetried(index))
            worker.connections.record(outcome, slot: slot, now: now)
        }
        sends.removeAll()
        // A turn can send many batches: each backend's error queue is read as often as its
        // ledger asks (every `drainEvery` packets), not only once a turn.
        worker.connections.settleBackends(now: now, into: &worker.core)
    }

    /// Points the poll set's TCP entries at the sockets of links waiting to become writable
    /// (connecting, or their send buffer full), the others at nothing; the set is made again
    /// only when the number of links changed (a pool change).
    private mutating func watchStreams(_ worker: borrowing WorkerState) {
        let links = worker.connections.links.count
        if streamEntries != links + worker.connections.retiredLinks.count { listenersChanged(worker) }
        let first = receivers.count + 1 + ingestDescriptors.count
        for index in worker.connections.links.indices {
            let waiting = worker.connections.links[index].wantsWritable
            poller.watchWritable(first + index, descriptor: waiting ? worker.connections.links[index].pollDescriptor : nil)
        }
        for index in worker.connections.retiredLinks.indices {
            let waiting = worker.connections.retiredLinks[index].wantsWritable
            poller.watchWritable(first + links + index, descriptor: waiting ? worker.connections.retiredLinks[index].pollDescriptor : nil)
        }
    }
}
