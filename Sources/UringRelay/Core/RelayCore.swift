import BasicContainers
import Glibc
import RelayKernel

/// The relay's work between receiving and sending, for one worker, whatever I/O driver feeds
/// it: parse → route → pack, holding and replaying a down backend's packets, the backend pool
/// in force and its changes, the stop phases and the accounting.
///
/// A driver (io_uring or portable) owns the kernel resources and calls, per loop turn:
/// `receive` for each datagram (while `canAcceptDatagram`), `sendCompleted` for each send
/// result, then `endTurn`; then it sends what `nextOutgoing` hands out. The core never sees a
/// ring, a socket or a system call, and a driver never sees a StatsD line. Nor does it read a
/// clock: every call that needs the time takes it (`now`, monotonic nanoseconds), so a test
/// drives it with a clock of its own.
///
/// A pool change of membership (backends added, removed or reordered) is applied at a turn
/// boundary, never inside a datagram: the core closes the old pool's batches and stops taking
/// datagrams until the driver has sent them all (`pendingPool` is then handed to the driver to
/// connect the new pool's sockets) and calls `completePoolChange`. No line is lost or sent
/// twice, and each line is routed wholly by one pool.
///
/// What the worker is told while it runs (`WorkerCommand`: stop, new settings, follow the
/// pool) the driver hands to `apply(_:now:)` at the start of a turn, in the order sent. A new
/// packet length takes the same path as a membership change: the open batches close (they go
/// out at the old length), no datagram is taken until they are all sent, then the send buffers
/// are made again for the new length (`pendingPool` is then the pool in force).
public struct RelayCore: ~Copyable {
    /// Where a worker is in its life.
    public enum Phase: Sendable {
        /// Relaying.
        case running
        /// Stopping: still receiving what clients sent, until the socket is empty.
        case draining
        /// Stopping: receiving has ended; every batch is closed and sent.
        case flushing
    }

    /// What the driver does after `endTurn`.
    public enum TurnAction: Sendable, Equatable {
        /// Go on as before.
        case proceed
        /// Stop receiving (cancel armed receives): the drain is over.
        case stopReceiving
    }

    /// The per-datagram state: batches, router, counters.
    private var processor: DatagramProcessor
    /// The pool lines are routed by now.
    public private(set) var pool: BackendPool
    /// The mirror pool (`--mirror`), fixed for the worker's life, if any.
    public let mirror: MirrorPool?
    /// A membership change waiting for the old pool's batches to be sent.
    public private(set) var pendingPool: BackendPool? {
        didSet { poolChangePending = pendingPool != nil }
    }
    /// Whether `pendingPool` is set, kept beside it for `canAcceptDatagram` (per datagram):
    /// testing the optional itself copies the pool there, a retain and a release.
    private var poolChangePending = false
    /// Whether a membership change is waiting (`pendingPool` is set), without copying the pool
    /// out to compare it with `nil` (a `memcpy` of the pool a loop turn where drivers asked).
    public var hasPendingPool: Bool { poolChangePending }
    /// The stop phase.
    public private(set) var phase = Phase.running
    /// When the stop budget runs out (`.max` while running).
    public private(set) var stopDeadline = UInt64.max
    private var drainDeadline = UInt64.max
    private var stopRequested = false
    private var holds: HoldStore
    /// Slots of replayed packets, sent before any ready batch: they must not be held again.
    private var replayed: [Int32]
    private var replayedHead = 0
    private var identities: [String]
    private var appliedGeneration: UInt64
    /// When to try again a membership change that could not be applied (`.max`: none failed).
    private var retryPoolChangeAt = UInt64.max
    private var nextPublish: UInt64
    /// When the counters were last published (or the core started): the heartbeat counts from it.
    private var lastPublished: UInt64
    /// Whether a turn ended since the last publication (its counters may not be on the board
    /// yet): the next publication is then a deadline, so live counters are never more than a
    /// publication interval old, even for a worker that goes idle right after.
    private var hasUnpublishedTurn = false
    private(set) var settings: WorkerSettings
    /// Per send slot: `handedOut` once `nextOutgoing` gave it to the driver, `retried` once a
    /// send of it was tried again; cleared when its send completes. Fixed-capacity: written
    /// twice a packet, without an `Array`'s copy-on-write uniqueness check.
    private var slotStates: RigidArray<SlotState>
    /// Per listener id, its position in the counters' listeners.
    private var listenerPositions: [Int] = []
    /// The listener whose datagrams are being received (`UInt32.max` before the first), and
    /// the received totals when its run of datagrams began: its share of the totals is their
    /// growth since, added to its own counters only when a datagram of another listener comes
    /// or the counters are read (`settleListenerShare`). Per datagram, the listener's counts
    /// then cost one comparison, not three read-modify-writes of a copy-on-write array.
    private var receivingListener = UInt32.max
    private var receivingSince = ReceivedTotals()

    /// The relay-wide received totals (`processor.receive` is the only thing that counts them).
    private struct ReceivedTotals {
        var datagrams: UInt64 = 0
        var bytes: UInt64 = 0
        var lines: UInt64 = 0

        init() {}

        init(_ counters: borrowing RelayCounters) {
            datagrams = counters[.datagramsReceived]
            bytes = counters[.bytesReceived]
            lines = counters[.linesReceived]
        }
    }

    /// What the core knows of a send slot's send.
    private struct SlotState: OptionSet {
        let rawValue: UInt8
        static let handedOut = SlotState(rawValue: 1)
        static let retried = SlotState(rawValue: 2)
    }

    /// A core routing by `settings.routing`'s current pool, started at `now`.
    ///
    /// - Throws: `SystemCallError` when the send buffers cannot be mapped.
    public init(settings: WorkerSettings, now: UInt64) throws(SystemCallError) {
        let pool = settings.routing.current
        self.settings = settings
        self.pool = pool
        mirror = settings.mirror
        identities = pool.identities
        appliedGeneration = pool.generation
        processor = try Self.makeProcessor(
            for: pool, packetBytes: settings.packetBytes, settings: settings, counters: RelayCounters(backends: pool.identities))
        holds = HoldStore(backendCount: pool.count, budget: settings.holdBudget, packetBytes: settings.packetBytes)
        replayed = []
        replayed.reserveCapacity(processor.assembler.pool.capacity)
        slotStates = RigidArray(repeating: [], count: processor.assembler.pool.capacity)
        nextPublish = now &+ CounterBoard.publishIntervalNanoseconds
        lastPublished = now
        // The health monitor reads this worker's refusals from what it publishes.
        settings.routing.watchRefusals(on: settings.board)
    }

    private static func makeProcessor(
        for pool: BackendPool, packetBytes: Int, settings: WorkerSettings, counters: RelayCounters
    ) throws(SystemCallError) -> DatagramProcessor {
        do throws(Errno) {
            return try DatagramProcessor(
                router: Router(pool: pool), packetBytes: packetBytes, maxDatagramBytes: settings.maxDatagramBytes,
                counters: counters, validation: settings.validation, hashKey: settings.hashKey, rewrite: settings.rewrite,
                mirror: settings.mirror)
        } catch { throw SystemCallError("mmap", "send buffers", error) }
    }

    /// The backends this worker sends to, for its sockets: the pool in force, then the mirror
    /// pool's backends (send-slot backend indices `pool.count…`). Allocates: not per turn.
    public var sendPool: BackendPool { pool.appendingMirror(mirror) }

    /// `pendingPool` with the mirror's backends appended, as `sendPool`.
    public var pendingSendPool: BackendPool? { pendingPool?.appendingMirror(mirror) }

    /// How many backend sockets the worker sends on: the pool's and the mirror's.
    public var sendTargetCount: Int { processor.assembler.backendCount + processor.assembler.mirrorBackendCount }

    /// The send-buffer slots the driver sends from.
    public var sendBuffers: SendBufferPool {
        _read { yield processor.assembler.pool }
    }

    /// This worker's counters so far.
    public var counters: RelayCounters {
        var counters = processor.counters
        Self.addListenerShare(of: receivingListener, since: receivingSince, positions: listenerPositions, to: &counters)
        return counters
    }

    /// Adds to `listener`'s received counters what the totals grew by `since` (nothing for a
    /// listener never named).
    private static func addListenerShare(
        of listener: UInt32, since: ReceivedTotals, positions: [Int], to counters: inout RelayCounters
    ) {
        let id = Int(listener)
        guard id < positions.count else { return }
        let now = ReceivedTotals(counters)
        counters.addReceived(
            listener: positions[id], datagrams: now.datagrams &- since.datagrams, bytes: now.bytes &- since.bytes,
            lines: now.lines &- since.lines)
    }

    /// Adds the receiving listener's share of the totals to its counters: before its run of
    /// datagrams ends, and before the counters are published, handed out or a listener renamed.
    @inline(never)
    private mutating func settleListenerShare() {
        Self.addListenerShare(
            of: receivingListener, since: receivingSince, positions: listenerPositions, to: &processor.counters)
        receivingSince = ReceivedTotals(processor.counters)
    }

    /// Whether the core can take one more datagram now: the send buffers have room for its
    /// worst case and no pool change is waiting for the old pool's batches.
    @inline(__always)
    public var canAcceptDatagram: Bool { !poolChangePending && processor.assembler.canAcceptDatagram }

    /// Relays one received datagram (or counts why it cannot be relayed).
    ///
    /// - Parameter listener: the id of the listener it came from (`nameListener`); its share of
    ///   the received counts is counted apart.
    @inline(__always)
    public mutating func receive(_ payload: ReceivedPayload, _ bytes: RawSpan, listener: UInt32, now: UInt64) {
        if listener != receivingListener {
            settleListenerShare()
            receivingListener = listener
        }
        processor.receive(payload, bytes, now: now)
    }

    /// Names listener `id` (its `listener` label, `udp:ADDRESS:PORT` with the port bound): what
    /// it receives is counted apart from here on. Call when a listener opens (start, reload),
    /// never per datagram.
    public mutating func nameListener(id: UInt32, label: String) {
        settleListenerShare()
        let index = Int(id)
        if listenerPositions.count <= index {
            listenerPositions.append(contentsOf: repeatElement(0, count: index + 1 - listenerPositions.count))
        }
        listenerPositions[index] = processor.counters.countListener(label)
    }

    /// Counts `count` of a listener's own counter (a TCP listener's connections), relay-wide
    /// and under listener `id`. Not per line: per connection event.
    public mutating func count(_ counter: ListenerCounter, listener id: UInt32, by count: UInt64 = 1) {
        // A received total counted here is no datagram's: kept out of the receiving listener's share.
        if counter.total.isReceivedTotal { settleListenerShare() }
        processor.counters[counter.total] &+= count
        if counter.total.isReceivedTotal { receivingSince = ReceivedTotals(processor.counters) }
        let index = Int(id)
        guard index < listenerPositions.count else { return }
        processor.counters[counter, listener: listenerPositions[index]] &+= count
    }

    /// Counts a relay-wide counter that no line's path counts (a TCP listener's accept errors,
    /// the partial lines its connections held when they closed at a stop).
    public mutating func count(_ counter: RelayCounter, by count: UInt64 = 1) {
        precondition(counter.backendColumn == nil, "a per-backend total is counted per backend")
        if counter.isReceivedTotal { settleListenerShare() }
        processor.counters[counter] &+= count
        if counter.isReceivedTotal { receivingSince = ReceivedTotals(processor.counters) }
    }

    /// Counts a failed receive (a result that is neither data nor an expected end).
    public mutating func countReceiveError() { processor.counters[.receiveErrors] &+= 1 }

    /// Counts a receive that found the provided-buffer ring empty (`ENOBUFS`).
    public mutating func countBufferRingExhausted() { processor.counters[.bufferRingExhausted] &+= 1 }

    /// Counts a multishot receive the kernel ended and the driver armed again.
    public mutating func countReceiveRearm() { processor.counters[.receiveRearms] &+= 1 }

    /// Counts a request the io_uring driver put off to its next turn: the submission queue was
    /// full and the kernel took none of it.
    public mutating func countSubmissionDeferred() { processor.counters[.submissionsDeferred] &+= 1 }

    /// Asks the core to stop: drain, flush, finish (see `Phase`).
    public mutating func requestStop() { stopRequested = true }

    /// Whether a driver should take no more datagrams in this turn: a stop was asked for at
    /// its start (the drain begins at the turn's end), or the drain has run out of time at
    /// `now` (the phase moves on at the turn's end).
    public func endsReceiving(now: UInt64) -> Bool {
        (stopRequested && phase == .running) || (phase == .draining && now >= drainDeadline)
    }

    /// Whether a stop was asked for (the phase moves on only at the turn's end).
    public var isStopRequested: Bool { stopRequested }

    /// Applies one command from the worker's control channel, at a turn boundary.
    ///
    /// `applySettings`: the flush interval holds at once, for the batches open too. A new packet
    /// length closes every open batch (packed at the old length, they go out as they are) and
    /// waits, taking no datagram, until they are sent; then the send buffers are made for the
    /// new length (through `pendingPool`, as a membership change). No line is lost, split or
    /// sent twice. A stopping worker keeps its packet length: its batches are being flushed.
    /// Held packets that the new, smaller send buffers could not carry make the change wait
    /// until none is held (`beginTurn` looks every turn).
    public mutating func apply(_ command: WorkerCommand, now: UInt64) {
        switch command {
        case .stop:
            requestStop()
        case .followPool:
            applyPublishedPool()
        case .applySettings(let packetBytes, let flushIntervalNanoseconds):
            settings.flushIntervalNanoseconds = flushIntervalNanoseconds
            guard packetBytes != settings.packetBytes, !stopRequested else { return }
            settings.packetBytes = packetBytes
            if !poolChangePending, heldPacketsFitNewLength { startRebuild() }
        case .addListener, .removeListener, .addTCPListener, .removeTCPListener:
            assertionFailure("listener commands are the driver's (`WorkerControl.take`)")
        }
    }

    /// Whether held packets fit the send buffers a new packet length makes (a replayed packet
    /// goes out whole from one slot): always when nothing is held or the slots do not shrink.
    private var heldPacketsFitNewLength: Bool {
        holds.heldPackets == 0 || max(settings.packetBytes, settings.maxDatagramBytes + 1) >= processor.assembler.pool.slotBytes
    }

    /// The packet length in force: the send buffers' (a new one waits for the old batches).
    public var packetBytes: Int { processor.assembler.packetBytes }

    /// The flush interval in force.
    public var flushIntervalNanoseconds: UInt64 { settings.flushIntervalNanoseconds }

    /// Closes every open batch and waits for them to be sent before the send buffers are made
    /// again (for a new packet length): the pool in force becomes the pending one, unless a
    /// membership change is waiting already (it makes the buffers with the new length too).
    private mutating func startRebuild() {
        processor.assembler.closeAll()
        if !poolChangePending { pendingPool = pool }
    }

    /// Whether a failed send should be tried again: the first time a slot's send fails with
    /// `ECONNREFUSED`. That error is an earlier packet's ICMP refusal left pending on the
    /// socket, which the kernel reported to this send instead of transmitting it (and cleared):
    /// this packet is not the lost one. The driver sends the slot again, before any later send
    /// to the same backend, and calls `sendCompleted` only with the final result.
    @inline(__always)
    public mutating func retriesSend(slot: Int, result: Int32) -> Bool {
        guard result == -ECONNREFUSED, !slotStates[slot].contains(.retried) else { return false }
        slotStates[slot].insert(.retried)
        return true
    }

    /// Takes back a packet `nextOutgoing` handed out that the driver never handed to the kernel
    /// and now will not (a stopping worker out of time, its backend's socket full): it is
    /// counted at exit as never sent (`lines_dropped.unsent_at_exit`), not as in flight.
    public mutating func withdrawSend(slot: Int) { slotStates[slot].remove(.handedOut) }

    /// Frees a sent packet's slot and says what it carried, for its backend's delivery ledger:
    /// its lines, bytes, the kernel's final answer and its fingerprint (to match the ICMP
    /// errors that quote it). A send that was tried again is counted in `send_retries`.
    ///
    /// - Parameters:
    ///   - result: bytes sent, or `-errno`, of the last try.
    ///   - retried: whether the driver tried the send again on its own (the portable driver's
    ///     `SendBatch`); a retry asked for by `retriesSend` is known already.
    @inline(__always)
    public mutating func sendCompleted(slot: Int, result: Int32, retried: Bool = false) -> SendOutcome {
        let fingerprint = processor.assembler.pool.withBytes(ofSlot: slot) { PacketFingerprint($0) }
        var outcome = processor.sendCompleted(slot: slot, result: result)
        outcome.fingerprint = fingerprint
        if retried || slotStates[slot].contains(.retried) {
            if processor.assembler.isMirror(outcome.backend) {
                processor.counters[.mirrorSendRetries] &+= 1
            } else {
                processor.counters[.sendRetries, backend: outcome.backend] &+= 1
            }
        }
        slotStates[slot] = []
        return outcome
    }

    /// Counts what a backend's delivery ledger settled (sent, refused, unreachable, failed,
    /// doubted, unconfirmed at exit) under the backend's identity. The health monitor learns of
    /// refusals from these counters as the worker publishes them, with no call on this path.
    public mutating func countDelivery(_ report: DeliveryLedger.Report, backend identity: String) {
        guard !report.isEmpty else { return }
        if MirrorPool.isMirror(identity: identity) {
            countMirrorDelivery(report, identity: identity)
            return
        }
        processor.counters.add(report.sent.lines, to: .linesSent, backend: identity)
        processor.counters.add(report.sent.packets, to: .packetsSent, backend: identity)
        processor.counters.add(report.sent.bytes, to: .bytesSent, backend: identity)
        processor.counters.add(report.sendErrors.packets, to: .sendErrors, backend: identity)
        processor.counters.add(report.sendErrors.lines, to: .linesDroppedSendError, backend: identity)
        processor.counters.add(report.refused.packets, to: .packetsRefused, backend: identity)
        processor.counters.add(report.refused.lines, to: .linesRefused, backend: identity)
        processor.counters.add(report.unreachable.lines, to: .linesUnreachable, backend: identity)
        processor.counters.add(report.doubted.lines, to: .linesDoubted, backend: identity)
        processor.counters.add(report.unconfirmedAtExit.lines, to: .linesUnconfirmedAtExit, backend: identity)
        processor.counters.add(report.unattributedLosses, to: .unattributedLosses, backend: identity)
        if report.stream != StreamCounts() { countStream(report.stream, backend: identity) }
    }

    /// Counts a TCP backend's stream outcomes (`StreamCounts`) under the backend's identity.
    private mutating func countStream(_ stream: StreamCounts, backend identity: String) {
        processor.counters.add(stream.sentLines, to: .linesSent, backend: identity)
        processor.counters.add(stream.sentBytes, to: .bytesSent, backend: identity)
        processor.counters.add(stream.writes, to: .packetsSent, backend: identity)
        processor.counters.add(stream.queueFullLines, to: .linesDroppedTCPQueueFull, backend: identity)
        processor.counters.add(stream.queueFullBytes, to: .bytesDroppedTCPQueueFull, backend: identity)
        processor.counters.add(stream.atExitLines, to: .linesDroppedTCPUnsentAtExit, backend: identity)
        processor.counters.add(stream.atExitBytes, to: .bytesDroppedTCPUnsentAtExit, backend: identity)
        processor.counters.add(stream.unconfirmedLines, to: .linesUnconfirmedAtExit, backend: identity)
        processor.counters.add(stream.lostAtResetLines, to: .tcpLinesLostAtReset, backend: identity)
        processor.counters.add(stream.lostAtResetBytes, to: .tcpBytesLostAtReset, backend: identity)
        processor.counters.add(stream.connects, to: .tcpConnects, backend: identity)
        processor.counters.add(stream.connectionFailures, to: .tcpConnectionFailures, backend: identity)
        processor.counters.add(stream.receivedBytes, to: .tcpBytesReceived, backend: identity)
    }

    /// Counts what a mirror backend's delivery ledger settled, in the mirror's counters (all
    /// mirror backends together, and the backend's own `MirrorBackendCounter`s; a refusal from
    /// the mirror never marks anything down).
    private mutating func countMirrorDelivery(_ report: DeliveryLedger.Report, identity: String) {
        let stream = report.stream
        processor.counters.add(UInt64(report.sent.lines), to: .linesSent, mirrorIdentity: identity)
        processor.counters.add(UInt64(report.sent.packets), to: .packetsSent, mirrorIdentity: identity)
        processor.counters.add(UInt64(report.sent.bytes), to: .bytesSent, mirrorIdentity: identity)
        processor.counters.add(UInt64(report.sendErrors.lines), to: .linesDroppedSendError, mirrorIdentity: identity)
        processor.counters.add(UInt64(report.refused.lines), to: .linesDroppedRefused, mirrorIdentity: identity)
        processor.counters.add(UInt64(report.unreachable.lines), to: .linesDroppedUnreachable, mirrorIdentity: identity)
        if stream != StreamCounts() {
            processor.counters.add(stream.sentLines, to: .linesSent, mirrorIdentity: identity)
            processor.counters.add(stream.writes, to: .packetsSent, mirrorIdentity: identity)
            processor.counters.add(stream.sentBytes, to: .bytesSent, mirrorIdentity: identity)
            processor.counters.add(stream.queueFullLines, to: .linesDroppedTCPQueueFull, mirrorIdentity: identity)
            processor.counters.add(stream.atExitLines, to: .linesDroppedTCPUnsentAtExit, mirrorIdentity: identity)
        }
        processor.counters[.mirrorLinesSent] &+= UInt64(report.sent.lines)
        processor.counters[.mirrorPacketsSent] &+= UInt64(report.sent.packets)
        processor.counters[.mirrorBytesSent] &+= UInt64(report.sent.bytes)
        processor.counters[.mirrorLinesDroppedSendError] &+= UInt64(report.sendErrors.lines)
        processor.counters[.mirrorLinesDroppedRefused] &+= UInt64(report.refused.lines)
        processor.counters[.mirrorLinesDroppedUnreachable] &+= UInt64(report.unreachable.lines)
        processor.counters[.mirrorLinesDoubted] &+= UInt64(report.doubted.lines)
        processor.counters[.mirrorLinesUnconfirmedAtExit] &+= UInt64(report.unconfirmedAtExit.lines)
        // A TCP mirror backend's link: what it delivered, left unconfirmed or lost, and what its
        // queue dropped or held at exit.
        guard stream != StreamCounts() else { return }
        processor.counters[.mirrorLinesSent] &+= stream.sentLines
        processor.counters[.mirrorBytesSent] &+= stream.sentBytes
        processor.counters[.mirrorPacketsSent] &+= stream.writes
        processor.counters[.mirrorLinesDroppedTCPQueueFull] &+= stream.queueFullLines
        processor.counters[.mirrorLinesDroppedTCPUnsentAtExit] &+= stream.atExitLines
        processor.counters[.mirrorLinesUnconfirmedAtExit] &+= stream.unconfirmedLines
        processor.counters[.mirrorTCPLinesLostAtReset] &+= stream.lostAtResetLines
        processor.counters[.mirrorTCPConnectionFailures] &+= stream.connectionFailures
    }

    /// Counts datagrams that were still queued in a listening socket when receiving stopped
    /// (they arrived after the drain ended) and are discarded as it closes, and the listeners
    /// that closed still holding datagrams it had no time to count.
    public mutating func countDiscardedAtStop(_ datagrams: Int, listenersLeftUncounted: Int = 0) {
        processor.counters[.datagramsDroppedAtExit] &+= UInt64(datagrams)
        processor.counters[.listenersClosedUncounted] &+= UInt64(listenersLeftUncounted)
    }

    /// Counts datagrams the kernel dropped at listener `id`'s socket (its receive queue was
    /// full), as read from the socket's drop counter by the driver: in the total and in the
    /// listener's own count.
    public mutating func countKernelDrops(_ datagrams: UInt64, listener id: UInt32) {
        guard datagrams > 0 else { return }
        processor.counters[.datagramsDroppedKernel] &+= datagrams
        let index = Int(id)
        guard index < listenerPositions.count else { return }
        processor.counters[.datagramsDroppedKernel, listener: listenerPositions[index]] &+= datagrams
    }

    /// Starts a turn, before its datagrams are relayed: applies a newly published pool (the
    /// health view and addresses at once; a membership change once the old pool's batches are
    /// sent), so datagrams that arrive after a publication are routed by it.
    public mutating func beginTurn(now: UInt64) {
        if now >= retryPoolChangeAt, !poolChangePending, settings.routing.current.membership != pool.membership {
            // A change that failed is tried again, at most once a second, until it succeeds:
            // a worker left on an old pool would route differently from the others.
            retryPoolChangeAt = .max
            appliedGeneration = 0
        }
        if !poolChangePending, settings.packetBytes != processor.assembler.packetBytes, !stopRequested,
           retryPoolChangeAt == .max || now >= retryPoolChangeAt, heldPacketsFitNewLength {
            // A new packet length still to take: its send buffers could not be made (tried
            // again a second later), or held packets were waiting to be replayed.
            retryPoolChangeAt = .max
            startRebuild()
        }
        applyPublishedPool()
    }

    /// The turn's bookkeeping once its receives and send results are in: closes batches that
    /// are due, moves the stop phases on, gives hold memory back to workers that claimed it and
    /// queues held packets again for backends that are back.
    ///
    /// - Parameter moreToReceive: whether anything received is still waiting in the driver or
    ///   the socket (the drain ends when nothing is).
    public mutating func endTurn(now: UInt64, moreToReceive: Bool) -> TurnAction {
        processor.assembler.closeExpired(now: now, interval: settings.flushIntervalNanoseconds)
        var action = TurnAction.proceed
        switch phase {
        case .running:
            if stopRequested {
                phase = .draining
                drainDeadline = now &+ settings.drainBudgetNanoseconds
                stopDeadline = now &+ settings.stopBudgetNanoseconds
            }
        case .draining:
            if !moreToReceive || now >= drainDeadline {
                phase = .flushing
                action = .stopReceiving
            }
        case .flushing:
            break
        }
        if phase == .flushing {
            // Lines from receives that completed while receiving was being stopped go out too.
            processor.assembler.closeAll()
        }
        repayHoldClaims()
        replayHeld(now: now)
        if now >= nextPublish {
            settleListenerShare()
            settings.board.publish(processor.counters, at: now)
            nextPublish = now &+ CounterBoard.publishIntervalNanoseconds
            lastPublished = now
            hasUnpublishedTurn = false
        } else {
            hasUnpublishedTurn = true
        }
        return action
    }

    /// The next packet to send: its send-buffer slot and backend index. Replayed packets go
    /// first. A packet for a backend that is down under the `hold` policy is held instead, and
    /// so is one for a backend that is up while packets held for it wait to be replayed
    /// (nothing newer may overtake them), whatever the policy: what was held before a reload
    /// left `hold` drains as it would have under `hold`. Failing open, every backend counts as
    /// up, so held packets replay to it then too and newer ones queue behind them. A packet for
    /// a backend whose held packets wait is held too, whatever its state: one packed while
    /// failing open and handed out once that ended (the backend still down) must not overtake
    /// them. A backend down under another policy gets only what that policy sends it, at once.
    @inline(__always)
    public mutating func nextOutgoing() -> (slot: Int, backend: Int)? {
        if replayedHead < replayed.count {
            let slot = Int(replayed[replayedHead])
            replayedHead += 1
            if replayedHead == replayed.count {
                replayed.removeAll(keepingCapacity: true)
                replayedHead = 0
            }
            slotStates[slot].insert(.handedOut)
            return (slot, processor.assembler.pool.backend(of: slot))
        }
        while let slot = processor.assembler.nextReady() {
            let backend = processor.assembler.pool.backend(of: slot)
            // A mirror packet (past the pool's backends) is never held.
            if (holds.heldPackets > 0 || (processor.router.downCount > 0 && processor.router.policy == .hold))
                && !processor.assembler.isMirror(backend)
                && (holds.isHolding(backend)
                    || (processor.router.down[backend] && processor.router.policy == .hold && !processor.router.isFailingOpen)) {
                hold(slot, for: backend)
                continue
            }
            slotStates[slot].insert(.handedOut)
            return (slot, backend)
        }
        return nil
    }

    /// The longest a worker goes without publishing its counters, busy or idle: its heartbeat,
    /// which `/healthz` reads (`CounterBoard.publishedAt`). An idle worker wakes for it.
    public static let heartbeatNanoseconds: UInt64 = 250_000_000

    /// When the core next needs a turn without any I/O: a batch's flush deadline, the next
    /// paced replay, the publication of a turn's counters, or the heartbeat (so never `nil`
    /// today; optional for the drivers' sake).
    @inline(__always)
    public func nextDeadline(now: UInt64) -> UInt64? {
        var flush = processor.assembler.nextDeadline(interval: settings.flushIntervalNanoseconds)
        // The turn that wakes for it ends past `nextPublish` (the heartbeat is the longer), so it publishes.
        let publication = hasUnpublishedTurn ? nextPublish : lastPublished &+ Self.heartbeatNanoseconds
        flush = flush.map { min($0, publication) } ?? publication
        guard holds.heldPackets > 0 else { return flush }
        let router = processor.router
        let failingOpen = router.isFailingOpen
        // As `replayHeld` picks them: the backends up, or all of them while failing open.
        let replay = holds.nextReplayTime(now: now, isReplaying: { failingOpen || !router.down[$0] })
        guard let replay else { return flush }
        return flush.map { min($0, replay) } ?? replay
    }

    /// Whether batches are open or ready to send.
    public var hasPendingBatches: Bool { processor.assembler.hasPendingBatches }

    /// Whether a stopping core has nothing left to send; the driver adds its own conditions
    /// (no send in flight, receiving ended).
    public var isFlushed: Bool { phase == .flushing && !processor.assembler.hasPendingBatches }

    /// Whether a membership change can be completed now: the old pool's batches are all sent
    /// and confirmed (`sendsInFlight == 0`). The driver then connects `pendingPool`'s sockets and
    /// calls `completePoolChange()`.
    public func poolChangeReady(sendsInFlight: Int) -> Bool {
        poolChangePending && sendsInFlight == 0 && !processor.assembler.hasPendingBatches
    }

    /// Switches to `pendingPool`: a new router, batches and cache sized for it, counters moved
    /// by backend identity, held packets kept for the backends that stay.
    ///
    /// - Throws: `SystemCallError` if the new send buffers cannot be mapped; the old pool then
    ///   stays in force, the failure is counted and the change is tried again (`beginTurn`).
    public mutating func completePoolChange(now: UInt64) throws(SystemCallError) {
        guard let next = pendingPool else { return }
        var counters = processor.counters
        let positions = pool.positions(in: next)
        counters.rekey(to: next.identities)
        let replacement: DatagramProcessor
        do {
            // A new packet length waits while held packets would not fit its buffers.
            let packetBytes = heldPacketsFitNewLength ? settings.packetBytes : processor.assembler.packetBytes
            replacement = try Self.makeProcessor(for: next, packetBytes: packetBytes, settings: settings, counters: counters)
        } catch {
            abandonPoolChange(now: now)
            throw error
        }
        pendingPool = nil
        processor = replacement
        let membershipChanged = next.membership != pool.membership
        // Every send of the old pool has completed (the change waits for them).
        slotStates = RigidArray(repeating: [], count: processor.assembler.pool.capacity)
        // Held packets follow their backend; a removed backend's are dropped and counted.
        let removedLines = holds.remap(positions, newCount: next.count)
        processor.counters[.linesDroppedBackendRemoved] &+= UInt64(removedLines)
        pool = next
        identities = next.identities
        // A rebuild for a new packet length keeps the pool: not a pool change.
        if membershipChanged { processor.counters[.poolChanges] &+= 1 }
    }

    /// Gives up a waiting membership change for now (the driver could not connect the new
    /// pool's sockets, or the send buffers could not be mapped): the old pool stays in force,
    /// the failure is counted, and the change is tried again a second later.
    public mutating func abandonPoolChange(now: UInt64) {
        guard poolChangePending else { return }
        pendingPool = nil
        processor.counters[.poolChangesFailed] &+= 1
        retryPoolChangeAt = now &+ Self.poolChangeRetryNanoseconds
    }

    /// How long after a failed pool change the worker tries it again.
    static let poolChangeRetryNanoseconds: UInt64 = 1_000_000_000

    /// Counts what could not be relayed or sent when a worker stops, and publishes the final
    /// counters: lines in packets never handed to the kernel (`lines_dropped.unsent_at_exit`),
    /// lines in sends handed to it whose completion never came (`lines_in_flight_at_exit`),
    /// held lines (`lines_dropped.held_at_exit`).
    ///
    /// - Parameters:
    ///   - unrelayedDatagrams: datagrams received but never relayed (stop budget exhausted).
    ///   - sendsInFlight: sends whose completion never came, by the driver's count (checked
    ///     against the slots handed out).
    ///   - now: the time of the last publication.
    public mutating func finish(unrelayedDatagrams: Int, sendsInFlight: Int, now: UInt64) -> RelayCounters {
        processor.counters[.datagramsDroppedAtExit] &+= UInt64(unrelayedDatagrams)
        // Index 0 for the primary pool, 1 for the mirror's.
        var unsent: [UInt64] = [0, 0]
        var inFlight: [UInt64] = [0, 0]
        var inFlightSlots = 0
        for slot in slotStates.indices where processor.assembler.pool.backend(of: slot) >= 0 {
            let lines = UInt64(processor.assembler.pool.lineCount(of: slot))
            let side = processor.assembler.isMirror(processor.assembler.pool.backend(of: slot)) ? 1 : 0
            if slotStates[slot].contains(.handedOut) {
                inFlight[side] &+= lines
                inFlightSlots += 1
            } else {
                unsent[side] &+= lines
                if side == 1 {
                    let mirror = processor.assembler.pool.backend(of: slot) - processor.assembler.backendCount
                    processor.counters[MirrorBackendCounter.linesDroppedUnsentAtExit, mirror: mirror] &+= lines
                }
            }
        }
        assert(inFlightSlots == sendsInFlight, "\(inFlightSlots) slots handed out, \(sendsInFlight) sends in flight")
        processor.counters[.linesDroppedUnsentAtExit] &+= unsent[0]
        processor.counters[.linesInFlightAtExit] &+= inFlight[0]
        processor.counters[.mirrorLinesDroppedUnsentAtExit] &+= unsent[1]
        processor.counters[.mirrorLinesInFlightAtExit] &+= inFlight[1]
        processor.counters[.linesDroppedHeldAtExit] &+= UInt64(holds.heldLines)
        settleListenerShare()
        settings.board.publish(processor.counters, at: now)
        return processor.counters
    }

    /// Leaves the send buffers mapped when the core goes away (a send that could not be
    /// confirmed complete may still read them).
    public mutating func keepSendBuffersMapped() { processor.assembler.keepMappedAfterDestruction() }

    /// Applies a newly published pool: the health view and addresses at once, a membership
    /// change once the old pool's batches are sent.
    private mutating func applyPublishedPool() {
        let routing = settings.routing
        guard routing.generation != appliedGeneration else { return }
        let published = routing.current
        appliedGeneration = published.generation
        processor.counters[.routingUpdates] &+= 1
        if published.membership != pool.membership {
            pendingPool = published
            processor.assembler.closeAll()
            return
        }
        if poolChangePending {
            // A health or address update for the pool still waiting to take over.
            pendingPool = published
            return
        }
        pool.down = published.down
        pool.addresses = published.addresses
        pool.generation = published.generation
        for backend in pool.down.indices { processor.router.setDown(backend, pool.down[backend]) }
    }

    private mutating func hold(_ slot: Int, for backend: Int) {
        let lines = processor.assembler.pool.lineCount(of: slot)
        let outcome = processor.assembler.pool.withBytes(ofSlot: slot) { bytes in
            holds.hold(bytes, lines: lines, backend: backend)
        }
        _ = processor.assembler.completeSend(slot)
        // Held whether or not it could be stored: each held line then ends exactly once as
        // replayed, hold_overflow (this one at once, when it did not fit), held_at_exit or
        // backend_removed, at every --hold-bytes, 0 included.
        processor.counters[.linesHeld, backend: backend] &+= UInt64(lines)
        if !outcome.stored {
            processor.counters[.linesDroppedHoldOverflow, backend: backend] &+= UInt64(lines)
        }
        if outcome.evictedLines > 0 {
            processor.counters[.linesDroppedHoldOverflow, backend: outcome.evictedBackend] &+= UInt64(outcome.evictedLines)
        }
    }

    /// Gives hold memory back to workers below their share that claimed it, dropping this
    /// worker's oldest held packets (counted as `hold_overflow`): a worker that stopped holding
    /// would otherwise keep its chunks while another drops what it is asked to hold.
    private mutating func repayHoldClaims() {
        guard holds.heldPackets > 0 else { return }
        // Bounded: each repayment unmaps one of this worker's chunks, and none is repaid at or
        // below its fair share.
        while let (backend, lines) = holds.repayClaim() {
            processor.counters[.linesDroppedHoldOverflow, backend: backend] &+= UInt64(lines)
        }
    }

    /// Puts held packets back on the wire for backends that are up, oldest first, as fast as
    /// the replay pace allows, ahead of any newer packet for them. Whatever the policy: packets
    /// held before a reload left `hold` are replayed all the same, and failing open (a reload
    /// left `hold` with every backend down) to every backend, as if each were up.
    private mutating func replayHeld(now: UInt64) {
        guard holds.heldPackets > 0, !poolChangePending else { return }
        let failingOpen = processor.router.isFailingOpen
        for backend in 0..<holds.backendCount
        where holds.isHolding(backend) && (failingOpen || !processor.router.down[backend]) {
            // The mirror's unused slots are not the primary's to replay into.
            while processor.assembler.pool.freeCount - processor.assembler.mirrorSlotsFree > 2 * processor.assembler.reserveSlots,
                  let (slot, lines) = processor.assembler.replay(from: &holds, backend: backend, now: now) {
                replayed.append(Int32(slot))
                processor.counters[.linesReplayed, backend: backend] &+= UInt64(lines)
            }
        }
    }
}

extension RelayCounter {
    /// Whether `RelayCore` splits this total among listeners by its growth (`receivingSince`).
    fileprivate var isReceivedTotal: Bool { self == .datagramsReceived || self == .bytesReceived || self == .linesReceived }
}
