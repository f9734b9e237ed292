import RelayKernel

import Glibc

/// What a worker is started with: resolved addresses and sizes, the same for every worker.
public struct WorkerSettings: Sendable {
    /// The address every worker's listening socket binds (with `SO_REUSEPORT`).
    public var listen: SocketAddress
    /// The backends, resolved, in routing order.
    public var backends: [SocketAddress]
    /// `--packet-len`.
    public var packetBytes: Int
    /// `--flush-interval` in nanoseconds.
    public var flushIntervalNanoseconds: UInt64
    /// `--rcvbuf`.
    public var receiveBufferBytes: Int
    /// `--max-datagram`.
    public var maxDatagramBytes: Int
    /// Provided buffers per worker (a power of two).
    public var receiveBuffers: Int
    /// The `io_uring_enter2` minimum wait.
    public var minimumWaitMicroseconds: UInt32
    /// The longest a stopping worker spends draining and flushing before it gives up.
    public var stopBudgetNanoseconds: UInt64 = 900_000_000
    /// The longest a stopping worker keeps receiving while clients keep sending; the rest of
    /// the stop budget is left for the final sends.
    public var drainBudgetNanoseconds: UInt64 = 600_000_000
    /// `--hold-bytes`: held packets per backend under the `hold` policy.
    public var holdBytes: Int = 4 << 20
    /// The shared health view and addresses, if a health monitor publishes them.
    public var routing: RoutingState?
    /// Where the worker publishes its live counters.
    public var board = CounterBoard()
}

/// Facts about a worker's kernel resources, for the start-up log.
public struct WorkerFacts: Sendable {
    /// The listening address with the port actually bound.
    public var listen: SocketAddress
    /// The receive buffer the kernel granted.
    public var receiveBufferBytes: Int
    /// The ring's setup flags by name.
    public var ringFlags: [String]
    /// Whether the kernel honours the minimum wait.
    public var minimumWait: Bool
    /// Provided buffers and their size.
    public var receiveBuffers: Int
    public var receiveBufferSize: Int
    /// Send-buffer slots.
    public var sendSlots: Int
}

/// One relay worker: a ring, a listening socket with a multishot receive on a provided-buffer
/// ring, a connected socket per backend, and the batches, all owned by one thread.
///
/// Each loop turn: publish recycled buffers, re-arm the receive if the kernel ended it, submit
/// every queued send and wait for completions in one `io_uring_enter2`; then take every CQE off
/// the queue, relay the received datagrams, close batches that are full or due, and queue
/// their sends for the next turn's submit.
///
/// Stopping (the wake-up eventfd fires): keep receiving until the socket is empty and every
/// received datagram is relayed, then close every batch, cancel the receive and wait for every
/// send to complete, within `stopBudgetNanoseconds`.
public struct Worker: ~Copyable {
    private enum Phase { case running, draining, flushing }

    private let ring: Ring
    private var buffers: ProvidedBufferRing
    private let listener: UDPSocket
    private let backendSockets: BackendSockets
    private let wakeup: WakeupEvent
    private var processor: DatagramProcessor
    private var queue: ReceiveQueue
    private let settings: WorkerSettings
    private var phase = Phase.running
    private var receiveArmed = false
    private var stopRequested = false
    private var receivedThisTurn = false
    private var sendsInFlight = 0
    private var holds: [HoldBuffer]
    private var addresses: [SocketAddress]
    private var appliedGeneration: UInt64 = 0
    /// The addresses the latest snapshot wants; differs from `addresses` until a reconnect succeeds.
    private var wantedAddresses: [SocketAddress]
    private let routingChanged: WakeupEvent?

    /// `SO_SNDBUF` for backend sockets: room for bursts without `EAGAIN`.
    private static let backendSendBuffer = 4 << 20
    /// Held packets queued again per loop turn once a backend is back, so a replay never
    /// starves live traffic of send slots.
    private static let replayPerTurn = 64

    /// Completions a waiting worker asks for before the minimum wait lets it go with fewer.
    private static let completionBatch: UInt32 = 32
    /// The wait bound when no batch is open. Without a bound the kernel ends a minimum wait
    /// that saw no completion with `ETIME`, which would wake an idle worker every 250 µs; with
    /// one it goes on waiting for the first completion.
    private static let idleWaitNanoseconds: UInt64 = 1_000_000_000
    private static let receiveUserData = UserData(.receive)

    /// Opens every kernel resource of one worker. Call on the worker's own thread: the ring
    /// accepts submissions only from the thread that created it (`SINGLE_ISSUER`).
    ///
    /// - Throws: `SystemCallError` naming the step that failed.
    public init(settings: WorkerSettings, router: Router, wakeup: WakeupEvent) throws(SystemCallError) {
        let bufferCount = settings.receiveBuffers
        let processor: DatagramProcessor
        do throws(Errno) {
            processor = try DatagramProcessor(
                router: router, packetBytes: settings.packetBytes, maxDatagramBytes: settings.maxDatagramBytes)
        } catch { throw SystemCallError("mmap", "send buffers", error) }
        let completions = UInt32(bufferCount + processor.assembler.pool.capacity + 64)
        let ring = try Self.openRing(completions: completions)
        let buffers = try Self.openBuffers(ring: ring, count: bufferCount, payloadBytes: settings.maxDatagramBytes)
        let listener = try UDPSocket.bound(to: settings.listen, reusePort: true, receiveBufferBytes: settings.receiveBufferBytes)
        let backendSockets = try BackendSockets(connecting: settings.backends, sendBufferBytes: Self.backendSendBuffer)
        var routingChanged: WakeupEvent?
        if let routing = settings.routing {
            do throws(Errno) { routingChanged = try routing.subscribe() } catch {
                throw SystemCallError("eventfd", "routing updates", error)
            }
        }
        self.routingChanged = routingChanged
        self.settings = settings
        self.wakeup = wakeup
        self.processor = processor
        self.ring = ring
        self.buffers = buffers
        self.listener = listener
        self.backendSockets = backendSockets
        queue = ReceiveQueue(capacity: bufferCount)
        holds = settings.backends.map { _ in HoldBuffer(capacity: settings.holdBytes) }
        addresses = settings.backends
        wantedAddresses = settings.backends
    }

    private static func openRing(completions: UInt32) throws(SystemCallError) -> Ring {
        do throws(Errno) { return try Ring(entries: 1024, completionEntries: completions) } catch {
            throw SystemCallError("io_uring_queue_init", "", error)
        }
    }

    private static func openBuffers(ring: borrowing Ring, count: Int, payloadBytes: Int) throws(SystemCallError) -> ProvidedBufferRing {
        do throws(Errno) {
            return try ProvidedBufferRing(ring: ring, groupID: 0, count: count, payloadBytes: payloadBytes)
        } catch { throw SystemCallError("io_uring_register_buf_ring", "\(count) buffers", error) }
    }

    /// The facts worth logging once at start-up.
    public var facts: WorkerFacts {
        WorkerFacts(
            listen: listener.localAddress, receiveBufferBytes: listener.receiveBufferBytes,
            ringFlags: ring.setupFlagNames, minimumWait: ring.supportsMinimumWait,
            receiveBuffers: buffers.count, receiveBufferSize: buffers.bufferBytes,
            sendSlots: processor.assembler.pool.capacity)
    }

    /// Relays until the wake-up event fires and everything received is sent, then closes the
    /// ring and returns the counters.
    ///
    /// - Throws: `SystemCallError` if the ring itself fails (never for a bad datagram or a
    ///   failing backend; those are counted).
    public consuming func run() throws(SystemCallError) -> RelayCounters {
        ring.armPoll(descriptor: wakeup.descriptor, userData: UserData(.wakeup))
        if let routingChanged { ring.armPoll(descriptor: routingChanged.descriptor, userData: UserData(.routing)) }
        var now = MonotonicClock.nanoseconds()
        var drainDeadline = UInt64.max
        var stopDeadline = UInt64.max
        var nextPublish = now &+ CounterBoard.publishIntervalNanoseconds
        while true {
            buffers.publish()
            if !receiveArmed && phase != .flushing && buffers.available > 0 {
                ring.armMultishotReceive(on: listener, buffers: buffers, userData: Self.receiveUserData)
                receiveArmed = true
            }
            let (completions, timeout) = waitPlan(now: now, stopDeadline: stopDeadline)
            do {
                try ring.submitAndWait(
                    completions: completions, timeoutNanoseconds: timeout,
                    minimumWaitMicroseconds: settings.minimumWaitMicroseconds)
            } catch { throw SystemCallError("io_uring_enter", "", error) }
            now = MonotonicClock.nanoseconds()
            receivedThisTurn = false
            while let completion = ring.nextCompletion() { handle(completion) }
            // After the completions: the routing eventfd is reset in there, so a publication
            // made since is either seen here or fires the re-armed poll.
            applyRoutingUpdate()
            relayQueued(now: now)
            processor.assembler.closeExpired(now: now, interval: settings.flushIntervalNanoseconds)
            switch phase {
            case .running:
                if stopRequested {
                    phase = .draining
                    drainDeadline = now &+ settings.drainBudgetNanoseconds
                    stopDeadline = now &+ settings.stopBudgetNanoseconds
                }
            case .draining:
                let drained = queue.isEmpty && !receivedThisTurn && !listener.hasPendingDatagram
                if drained || now >= drainDeadline {
                    if receiveArmed { ring.cancel(Self.receiveUserData, userData: UserData(.cancel)) }
                    phase = .flushing
                }
            case .flushing:
                break
            }
            if phase == .flushing {
                // Lines from receives that completed while the cancel was in flight go out too.
                processor.assembler.closeAll()
            }
            replayHeld()
            queueReadySends()
            if now >= nextPublish {
                settings.board.publish(processor.counters)
                nextPublish = now &+ CounterBoard.publishIntervalNanoseconds
            }
            if phase == .flushing && sendsInFlight == 0 && !receiveArmed && queue.isEmpty
                && !processor.assembler.hasPendingBatches {
                break
            }
            if phase == .flushing && now >= stopDeadline {
                // Out of time: still hand the last sends to the kernel and collect what completed.
                try? ring.submitAndWait(completions: 0, timeoutNanoseconds: 0, minimumWaitMicroseconds: 0)
                while let completion = ring.nextCompletion() { handle(completion) }
                break
            }
        }
        // Whatever could not be relayed or confirmed in the stop budget is counted, not lost silently.
        processor.counters[.datagramsDroppedAtExit] &+= UInt64(queue.count)
        if sendsInFlight > 0 || processor.assembler.hasPendingBatches {
            processor.counters[.linesUnconfirmedAtExit] &+= UInt64(processor.assembler.pool.linesInUse)
        }
        for backend in holds.indices where !holds[backend].isEmpty {
            processor.counters[.linesDroppedHeldAtExit] &+= UInt64(holds[backend].lines)
        }
        let counters = processor.counters
        settings.board.publish(counters)
        let quiescent = sendsInFlight == 0 && !receiveArmed
        if !quiescent {
            // The kernel may still use this memory; keeping it mapped is the safe choice.
            buffers.keepMappedAfterDestruction()
            processor.assembler.keepMappedAfterDestruction()
        }
        ring.close()
        return counters
    }

    /// How many completions to wait for and for how long.
    private func waitPlan(now: UInt64, stopDeadline: UInt64) -> (UInt32, UInt64?) {
        func until(_ deadline: UInt64) -> UInt64 { deadline > now ? deadline - now : 0 }
        let flushDue = processor.assembler.nextDeadline(interval: settings.flushIntervalNanoseconds).map(until)
        switch phase {
        case .running:
            if !queue.isEmpty {
                // Waiting for sends to free slots; the flush deadline still bounds the wait.
                return (1, flushDue ?? settings.flushIntervalNanoseconds)
            }
            // Waiting for several completions is only safe with a minimum wait to cut it short;
            // without one the worker would sit on a lone datagram (or its stop signal).
            let batch = ring.supportsMinimumWait && settings.minimumWaitMicroseconds > 0 ? Self.completionBatch : 1
            return (batch, flushDue ?? Self.idleWaitNanoseconds)
        case .draining:
            return (queue.isEmpty ? 0 : 1, min(until(stopDeadline), 1_000_000))
        case .flushing:
            return (1, until(stopDeadline))
        }
    }

    /// Handles one CQE; a result is data, each case with its reason.
    @inline(__always)
    private mutating func handle(_ completion: Completion) {
        switch completion.userData.kind {
        case .receive:
            if completion.result >= 0, let bufferID = completion.bufferID {
                buffers.take(bufferID)
                queue.push(bufferID: bufferID, result: completion.result)
                receivedThisTurn = true
            } else if completion.result < 0 {
                switch -completion.result {
                case ENOBUFS:
                    // Every buffer is held: re-armed once some are recycled this turn.
                    processor.counters[.bufferRingExhausted] &+= 1
                case ECANCELED:
                    break  // stopping
                default:
                    processor.counters[.receiveErrors] &+= 1
                }
            }
            if !completion.hasMore {
                receiveArmed = false
                if completion.result != -ECANCELED && phase != .flushing {
                    processor.counters[.receiveRearms] &+= 1
                }
            }
        case .send:
            sendsInFlight -= 1
            let slot = Int(completion.userData.index)
            if completion.result == -ECONNREFUSED {
                settings.routing?.reportRefusal(backend: processor.assembler.pool.backend(of: slot))
            }
            processor.sendCompleted(slot: slot, result: completion.result)
        case .wakeup:
            stopRequested = true
        case .cancel:
            break  // the cancelled receive reports its own end
        case .routing:
            // Applied at the top of the next turn; re-armed here so no publication is missed.
            if let routingChanged, phase != .flushing {
                routingChanged.reset()
                ring.armPoll(descriptor: routingChanged.descriptor, userData: UserData(.routing))
            }
        case nil:
            assertionFailure("completion with unknown user_data \(completion.userData)")
        }
    }

    /// Relays queued datagrams, oldest first, while the send-buffer pool has room for one more.
    @inline(__always)
    private mutating func relayQueued(now: UInt64) {
        while processor.assembler.canAcceptDatagram, let entry = queue.pop() {
            Self.relay(entry, from: buffers, into: &processor, now: now)
            buffers.recycle(entry.bufferID)
        }
    }

    @inline(__always)
    private static func relay(
        _ entry: (bufferID: UInt16, result: Int32), from buffers: borrowing ProvidedBufferRing,
        into processor: inout DatagramProcessor, now: UInt64
    ) {
        buffers.withPayload(of: entry.bufferID, result: entry.result) { payload, bytes in
            processor.receive(payload, bytes, now: now)
        }
    }

    /// Turns every ready batch into a `send` SQE (submitted with the next wait), or, for a
    /// backend that is down under the `hold` policy, moves it into that backend's hold buffer.
    @inline(__always)
    private mutating func queueReadySends() {
        while let slot = processor.assembler.nextReady() {
            let backend = processor.assembler.pool.backend(of: slot)
            if processor.router.downCount > 0 && processor.router.policy == .hold && processor.router.down[backend] {
                hold(slot, for: backend)
                continue
            }
            ring.send(slot: slot, of: processor.assembler.pool, to: backendSockets, userData: UserData(.send, index: UInt32(slot)))
            sendsInFlight += 1
        }
    }

    private mutating func hold(_ slot: Int, for backend: Int) {
        let lines = processor.assembler.pool.lineCount(of: slot)
        let (stored, dropped) = processor.assembler.pool.withBytes(ofSlot: slot) { bytes in
            holds[backend].push(bytes, lines: lines)
        }
        _ = processor.assembler.completeSend(slot)
        if stored {
            processor.counters[.linesHeld] &+= UInt64(lines)
            processor.counters[.linesHeld, backend: backend] &+= UInt64(lines)
        }
        if dropped > 0 {
            processor.counters[.linesDroppedHoldOverflow] &+= UInt64(dropped)
            processor.counters[.linesDroppedHoldOverflow, backend: backend] &+= UInt64(dropped)
        }
    }

    /// Queues held packets again for backends that are back up, a bounded number per turn.
    private mutating func replayHeld() {
        guard processor.router.policy == .hold else { return }
        for backend in holds.indices where !holds[backend].isEmpty && !processor.router.down[backend] {
            var budget = Self.replayPerTurn
            while budget > 0, processor.assembler.pool.freeCount > 2 * processor.assembler.reserveSlots,
                  let lines = processor.assembler.replay(from: &holds[backend], to: backend) {
                processor.counters[.linesReplayed] &+= UInt64(lines)
                processor.counters[.linesReplayed, backend: backend] &+= UInt64(lines)
                budget -= 1
            }
        }
    }

    /// Applies a newly published health view and address list, once per loop turn at most.
    private mutating func applyRoutingUpdate() {
        if let routing = settings.routing, routing.generation != appliedGeneration {
            let snapshot = routing.current
            appliedGeneration = snapshot.generation
            for backend in snapshot.down.indices { processor.router.setDown(backend, snapshot.down[backend]) }
            wantedAddresses = snapshot.addresses
            processor.counters[.routingUpdates] &+= 1
        }
        guard wantedAddresses != addresses else { return }
        for backend in addresses.indices where wantedAddresses[backend] != addresses[backend] {
            // A failed reconnect keeps the old address and is tried again next turn.
            if (try? backendSockets.reconnect(backend, to: wantedAddresses[backend], sendBufferBytes: Self.backendSendBuffer)) != nil {
                addresses[backend] = wantedAddresses[backend]
            }
        }
    }
}
