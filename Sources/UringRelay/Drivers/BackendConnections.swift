import BasicContainers
import RelayKernel

/// A worker's connected sockets to the backends of the pool in force, each with the delivery
/// ledger of what became of the packets sent on it, kept in step with the pool. Shared by both
/// drivers.
///
/// - Every send's outcome lands in the ledger of the socket it was sent on: the driver says
///   which slot it hands to the kernel (`sending`), and the completion (`record`) goes to that
///   socket's ledger, even if the backend has moved to another socket since.
/// - A backend whose address moved (DNS) gets a new socket; the old one retires with its
///   ledger and its descriptor number, which sends already prepared still name.
/// - A membership change gets a new set of sockets once the core says the old pool's sends are
///   all done. A backend that stays keeps its socket and ledger; a removed one is *retired*.
/// - A retired socket stays open until every send on it has completed and every packet sent
///   on it is confirmed or refused, so a late refusal is still counted; its error queue is
///   read only when its ledger asks, like any other, then it is closed.
/// - Every turn, `settle` reads the error queue of each socket whose ledger asks for it (every
///   64 packets, and once its oldest packet is old enough to confirm) and counts the outcomes.
/// - A TCP backend (`tcp://`, or `--sendproto TCP`) also has a `TCPBackendLink`: the driver
///   hands its packets to `enqueueStream` instead of sending them, which copies them into the
///   link's queue and frees their slots at once; the link writes them on its connection
///   (`progressStreams`, or `send` SQEs on the io_uring driver). Its UDP socket stays open,
///   unused, so every per-backend array keeps one entry per backend.
struct BackendConnections: ~Copyable {
    /// One connected socket per backend of the core's pool, in pool order.
    private(set) var sockets: BackendSockets
    /// Per backend: its current socket's ledger. Fixed-capacity (remade on a pool change):
    /// one is written for every packet sent, without an `Array`'s uniqueness check.
    private var ledgers: RigidArray<DeliveryLedger>
    private(set) var identities: [String]
    private var addresses: [SocketAddress]
    private var generation: UInt64
    /// Per backend: the number of its current socket, unique among this worker's sockets.
    private var socketNumbers: [UInt32]
    /// Per backend: sends handed to the kernel on its current socket and not yet completed.
    private var inFlight: RigidArray<Int>
    /// Per send slot: the number of the socket its send in flight went on.
    private var sentOn: RigidArray<UInt32>
    private var nextSocketNumber: UInt32 = 0
    /// Sockets of backends that left the pool or moved, until their packets are all accounted for.
    private var retired: RetiredSockets
    /// When a failed reconnect (after an address change) may be tried again.
    private var reconnectRetryAt: UInt64 = 0

    /// `SO_SNDBUF` for backend sockets (`WorkerSettings.backendSendBufferBytes`).
    let sendBufferBytes: Int
    /// The TCP backends' links, in pool order of their backends.
    var links: RigidArray<TCPBackendLink>
    /// Per backend: its link's index in `links`, or −1 for a UDP backend.
    var linkOf: [Int]
    /// The transport of backends written without a scheme (`--sendproto`).
    let sendProtocol: BackendTransport
    /// Bytes each TCP link may hold (`--tcp-backend-queue`).
    let streamQueueBytes: Int
    /// The id the next TCP link takes.
    var nextLinkID: UInt16 = 0
    /// Links of TCP backends a pool change removed, still writing what they held, each with
    /// its backend's identity and when it is given up (`retiredLinkDeadlines`).
    var retiredLinks = UniqueArray<TCPBackendLink>()
    var retiredLinkIdentities: [String] = []
    var retiredLinkDeadlines: [UInt64] = []

    /// How late past its confirmation time a packet may be confirmed. Under steady traffic the
    /// oldest unconfirmed packet comes of age every few microseconds; without this slack every
    /// turn would read every error queue and every wait would be cut to that gap, defeating
    /// the minimum wait. With it, a backend's queue is read at most every 50 ms for age (and
    /// every 64 packets for room), and confirmations lag by at most that.
    static let confirmationSlackNanoseconds: UInt64 = 50_000_000

    /// Connects to `pool`'s backends, each socket with `sendBufferBytes` of `SO_SNDBUF`.
    ///
    /// - Parameter sendSlots: how many send slots the core's send buffers have.
    init(
        pool: BackendPool, sendSlots: Int, sendBufferBytes: Int, sendProtocol: BackendTransport = .udp,
        streamQueueBytes: Int = RelayConfiguration.defaultTCPBackendQueueBytes, now: UInt64 = 0
    ) throws(SystemCallError) {
        self.sendBufferBytes = sendBufferBytes
        self.sendProtocol = sendProtocol
        self.streamQueueBytes = streamQueueBytes
        var linkOf: [Int] = []
        var nextLinkID: UInt16 = 0
        links = Self.makeLinks(
            for: pool, sendProtocol: sendProtocol, queueBytes: streamQueueBytes, sendBufferBytes: sendBufferBytes, now: now,
            linkOf: &linkOf, nextLinkID: &nextLinkID)
        self.linkOf = linkOf
        self.nextLinkID = nextLinkID
        sockets = try BackendSockets(connecting: pool.addresses, sendBufferBytes: sendBufferBytes)
        ledgers = RigidArray(repeating: DeliveryLedger(), count: pool.count)
        identities = pool.identities
        addresses = pool.addresses
        generation = pool.generation
        socketNumbers = pool.backends.indices.map { UInt32($0) }
        nextSocketNumber = UInt32(pool.count)
        inFlight = RigidArray(repeating: 0, count: pool.count)
        sentOn = RigidArray(repeating: 0, count: sendSlots)
        retired = RetiredSockets()
    }

    /// Notes that `slot`'s packet is being handed to the kernel on `backend`'s current socket
    /// (a first send or a retry): call it when the send is prepared, before any reconnect.
    @inline(__always)
    mutating func sending(slot: Int, backend: Int) {
        sentOn[slot] = socketNumbers[backend]
        inFlight[backend] += 1
    }

    /// Takes back `sending(slot:backend:)` for a send the kernel did not make (cancelled, or
    /// failed by an earlier packet's pending refusal): it goes again later, marked anew on the
    /// socket the backend has then.
    @inline(__always)
    mutating func withdrawn(slot: Int, backend: Int) {
        if sentOn[slot] == socketNumbers[backend] {
            inFlight[backend] -= 1
        } else {
            retired.forgetSend(socket: sentOn[slot])
        }
    }

    /// Enters a completed send in the ledger of the socket it was sent on.
    @inline(__always)
    mutating func record(_ outcome: SendOutcome, slot: Int, now: UInt64) {
        let backend = outcome.backend
        if sentOn[slot] == socketNumbers[backend] {
            inFlight[backend] -= 1
            Self.enter(outcome, in: &ledgers[backend], now: now)
        } else {
            retired.record(outcome, socket: sentOn[slot], now: now)
        }
    }

    /// Enters a send's outcome in `ledger`.
    @inline(__always)
    fileprivate static func enter(_ outcome: SendOutcome, in ledger: inout DeliveryLedger, now: UInt64) {
        if outcome.isAccepted {
            ledger.accepted(lines: outcome.lines, bytes: outcome.bytes, fingerprint: outcome.fingerprint, now: now)
        } else {
            ledger.sendFailed(lines: outcome.lines, bytes: outcome.bytes, fingerprint: outcome.fingerprint, now: now)
        }
    }

    /// Reads the error queues that are due and counts what the ledgers settled.
    mutating func settle(now: UInt64, into core: inout RelayCore) {
        let aged = now &- Self.confirmationSlackNanoseconds
        settleBackends(now: now, aged: aged, into: &core)
        retired.settle(now: now, aged: aged, into: &core)
        reportStreams(into: &core, now: now)
    }

    /// Reads the error queues of the backends due for it (`DeliveryLedger.needsDrain`: a
    /// `drainEvery` of packets sent since the last read, or an unconfirmed packet old enough)
    /// and counts what their ledgers settled. A driver that can send more than that to one
    /// backend within a turn (the portable one: several `sendmmsg` batches) calls it after each
    /// batch too: a socket's error queue is charged to its receive buffer, and an entry the
    /// kernel drops for want of room would leave its refused packet counted as sent.
    mutating func settleBackends(now: UInt64, aged: UInt64? = nil, into core: inout RelayCore) {
        let aged = aged ?? now &- Self.confirmationSlackNanoseconds
        for backend in ledgers.indices {
            if ledgers[backend].needsDrain(now: aged) {
                ledgers[backend].drain(backend, of: sockets, now: now)
            } else if !ledgers[backend].hasUnreportedFailures {
                continue
            }
            core.countDelivery(ledgers[backend].takeReport(), backend: identities[backend])
        }
    }

    /// When a ledger's oldest packet will be due for confirmation, with the slack (so an idle
    /// worker wakes for it, and a busy one is never woken early for it).
    @inline(__always)
    var nextConfirmation: UInt64? {
        var first = retired.nextConfirmation
        for index in ledgers.indices { first = earliest(first, ledgers[index].nextConfirmation) }
        return earliest(first.map { $0 &+ Self.confirmationSlackNanoseconds }, nextStreamDeadline)
    }

    /// Whether every packet sent is confirmed, refused or failed.
    var isSettled: Bool {
        if retired.nextConfirmation != nil || !streamsSettled { return false }
        return ledgers.indices.allSatisfy { ledgers[$0].nextConfirmation == nil }
    }

    /// At exit: reads every error queue once more and counts what is still unconfirmed as such.
    mutating func finish(now: UInt64, into core: inout RelayCore) {
        for backend in ledgers.indices {
            ledgers[backend].drain(backend, of: sockets, now: now)
            ledgers[backend].closeAtExit()
            core.countDelivery(ledgers[backend].takeReport(), backend: identities[backend])
        }
        retired.finish(now: now, into: &core)
        finishStreams(into: &core)
    }

    /// Follows the core's pool after its turn: completes a waiting membership change when no
    /// send is in flight, else reconnects backends whose address moved. A failed reconnect
    /// keeps the old address and is tried again a second later; a failed membership change
    /// keeps the old pool (the core counts it).
    mutating func follow(_ core: inout RelayCore, sendsInFlight: Int, now: UInt64) {
        if core.poolChangeReady(sendsInFlight: sendsInFlight), let next = core.pendingSendPool {
            changeMembership(to: next, core: &core, now: now)
            return
        }
        guard !core.hasPendingPool, core.pool.generation != generation, now >= reconnectRetryAt else { return }
        let wanted = core.pool.addresses
        var allMoved = true
        for backend in wanted.indices where wanted[backend] != addresses[backend] {
            do {
                // The old socket retires with the packets it sent and the sends still in
                // flight on it: their outcomes and late refusals still count, in its ledger.
                try sockets.reconnect(backend, to: wanted[backend], sendBufferBytes: sendBufferBytes, retiring: &retired.sockets)
                retired.add(ledger: ledgers[backend], identity: identities[backend], socket: socketNumbers[backend], inFlight: inFlight[backend])
                ledgers[backend] = DeliveryLedger()
                socketNumbers[backend] = takeSocketNumber()
                inFlight[backend] = 0
                addresses[backend] = wanted[backend]
                if linkOf[backend] >= 0 { links[linkOf[backend]].move(to: wanted[backend], now: now) }
            } catch {
                allMoved = false
            }
        }
        if allMoved {
            generation = core.pool.generation
        } else {
            // Opening sockets fails for a reason that lasts (no descriptors, no route): once a second.
            reconnectRetryAt = now &+ 1_000_000_000
        }
    }

    private mutating func takeSocketNumber() -> UInt32 {
        defer { nextSocketNumber &+= 1 }
        return nextSocketNumber
    }

    /// Switches to `next`'s sockets: a backend that stays at the same address keeps its socket
    /// and ledger; the others' sockets retire with their ledgers. No send is in flight.
    private mutating func changeMembership(to next: BackendPool, core: inout RelayCore, now: UInt64) {
        let keep = core.sendPool.positions(in: next)
        var kept: [Int?] = Array(repeating: nil, count: next.count)
        for (old, new) in keep.enumerated() {
            if let new, addresses[old] == next.addresses[new] { kept[new] = old }
        }
        let retiredBefore = retired.sockets.count
        let replacement: BackendSockets
        do {
            replacement = try sockets.rebuilt(
                keeping: kept, addresses: next.addresses, sendBufferBytes: sendBufferBytes, retiring: &retired.sockets)
        } catch {
            core.abandonPoolChange(now: now)
            return
        }
        do { try core.completePoolChange(now: now) } catch {
            // The old pool stays in force (the core counts the failure): undo the retirement.
            while retired.sockets.count > retiredBefore { retired.sockets.closeSocket(at: retired.sockets.count - 1) }
            return
        }
        var reused = Array(repeating: false, count: ledgers.count)
        for old in kept.compactMap({ $0 }) { reused[old] = true }
        var newLedgers = RigidArray(repeating: DeliveryLedger(), count: next.count)
        var newNumbers: [UInt32] = []
        for (new, old) in kept.enumerated() {
            if let old {
                newLedgers[new] = ledgers[old]
                newNumbers.append(socketNumbers[old])
            } else {
                newNumbers.append(takeSocketNumber())
            }
        }
        for old in ledgers.indices where !reused[old] {
            retired.add(ledger: ledgers[old], identity: identities[old], socket: socketNumbers[old], inFlight: 0)
        }
        rebuildLinks(for: next, keeping: kept, core: &core, now: now)
        sockets = replacement
        ledgers = newLedgers
        identities = next.identities
        addresses = next.addresses
        socketNumbers = newNumbers
        inFlight = RigidArray(repeating: 0, count: next.count)
        // The core's new send buffers may differ in number.
        sentOn = RigidArray(repeating: 0, count: core.sendBuffers.capacity)
        generation = core.pool.generation
        retired.settle(now: now, aged: now &- Self.confirmationSlackNanoseconds, into: &core)
    }
}

/// Sockets of backends that left the pool or moved, each kept open with its ledger until every
/// send on it has completed and every packet sent on it is confirmed or refused (a refusal
/// arrives a round trip after the send).
struct RetiredSockets: ~Copyable {
    /// The sockets, added to by `BackendSockets.rebuilt` and `reconnect` in the order their
    /// ledgers are added.
    var sockets = RetiringSockets()
    private var ledgers: [DeliveryLedger] = []
    private var identities: [String] = []
    private var numbers: [UInt32] = []
    private var inFlight: [Int] = []

    /// Adds the ledger of the socket most recently retired without one, with its number and
    /// the sends still in flight on it.
    mutating func add(ledger: DeliveryLedger, identity: String, socket number: UInt32, inFlight sends: Int) {
        ledgers.append(ledger)
        identities.append(identity)
        numbers.append(number)
        inFlight.append(sends)
    }

    /// Enters a completed send in the ledger of retired socket `number` it was sent on.
    mutating func record(_ outcome: SendOutcome, socket number: UInt32, now: UInt64) {
        guard let index = numbers.firstIndex(of: number) else {
            assertionFailure("a send completed on socket \(number), which is neither current nor retired")
            return
        }
        inFlight[index] -= 1
        BackendConnections.enter(outcome, in: &ledgers[index], now: now)
    }

    /// Notes that a send in flight on retired socket `number` moved to another socket.
    mutating func forgetSend(socket number: UInt32) {
        guard let index = numbers.firstIndex(of: number) else { return }
        inFlight[index] -= 1
    }

    /// Reads the error queues of retired sockets whose ledgers ask for it, counts what settled,
    /// and closes each socket once nothing is in flight on it and its ledger is settled.
    mutating func settle(now: UInt64, aged: UInt64, into core: inout RelayCore) {
        var index = 0
        while index < ledgers.count {
            if ledgers[index].needsDrain(now: aged) {
                ledgers[index].drain(index, of: sockets, now: now)
            }
            core.countDelivery(ledgers[index].takeReport(), backend: identities[index])
            if inFlight[index] == 0 && ledgers[index].nextConfirmation == nil {
                sockets.closeSocket(at: index)
                ledgers.remove(at: index)
                identities.remove(at: index)
                numbers.remove(at: index)
                inFlight.remove(at: index)
            } else {
                index += 1
            }
        }
    }

    /// When the next retired packet can be confirmed.
    var nextConfirmation: UInt64? {
        var first: UInt64?
        for index in ledgers.indices { first = earliest(first, ledgers[index].nextConfirmation) }
        return first
    }

    /// At exit: whatever is still unconfirmed is counted as such.
    mutating func finish(now: UInt64, into core: inout RelayCore) {
        for index in ledgers.indices {
            ledgers[index].drain(index, of: sockets, now: now)
            ledgers[index].closeAtExit()
            core.countDelivery(ledgers[index].takeReport(), backend: identities[index])
        }
    }
}

/// The earlier of two optional deadlines (`nil` is "never").
@inline(__always)
func earliest(_ first: UInt64?, _ second: UInt64?) -> UInt64? {
    guard let first else { return second }
    guard let second else { return first }
    return min(first, second)
}
