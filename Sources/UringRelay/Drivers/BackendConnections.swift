import RelayKernel

/// A worker's connected sockets to the backends of the pool in force, each with the delivery
/// ledger of what became of the packets sent on it, kept in step with the pool. Shared by both
/// drivers.
///
/// - A backend whose address moved (DNS) is reconnected in place (same descriptor number);
///   the old socket retires with its ledger, so no refusal is lost with it.
/// - A membership change gets a new set of sockets once the core says the old pool's sends are
///   all done. A backend that stays keeps its socket and ledger; a removed one is *retired*:
///   its socket stays open, and its error queue read, until every packet sent on it is
///   confirmed or refused, so a late refusal is still counted.
/// - Every turn, `settle` reads the error queue of each socket whose ledger asks for it (every
///   64 packets, and once its oldest packet is old enough to confirm) and counts the outcomes.
struct BackendConnections: ~Copyable {
    /// One connected socket per backend of the core's pool, in pool order.
    private(set) var sockets: BackendSockets
    private var ledgers: [DeliveryLedger]
    private var identities: [String]
    private var addresses: [SocketAddress]
    private var generation: UInt64
    /// Sockets of backends that left the pool, until their packets are all accounted for.
    private var retired: RetiredSockets
    /// When a failed reconnect (after an address change) may be tried again.
    private var reconnectRetryAt: UInt64 = 0

    /// `SO_SNDBUF` for backend sockets (`WorkerSettings.backendSendBufferBytes`).
    private let sendBufferBytes: Int

    /// How late past its confirmation time a packet may be confirmed. Under steady traffic the
    /// oldest unconfirmed packet comes of age every few microseconds; without this slack every
    /// turn would read every error queue and every wait would be cut to that gap, defeating
    /// the minimum wait. With it, a backend's queue is read at most every 50 ms for age (and
    /// every 64 packets for room), and confirmations lag by at most that.
    static let confirmationSlackNanoseconds: UInt64 = 50_000_000

    /// Connects to `pool`'s backends, each socket with `sendBufferBytes` of `SO_SNDBUF`.
    init(pool: BackendPool, sendBufferBytes: Int) throws(SystemCallError) {
        self.sendBufferBytes = sendBufferBytes
        sockets = try BackendSockets(connecting: pool.addresses, sendBufferBytes: sendBufferBytes)
        ledgers = pool.backends.map { _ in DeliveryLedger() }
        identities = pool.identities
        addresses = pool.addresses
        generation = pool.generation
        retired = RetiredSockets()
    }

    /// Enters a completed send in its backend's ledger.
    @inline(__always)
    mutating func record(_ outcome: SendOutcome, now: UInt64) {
        if outcome.isAccepted {
            ledgers[outcome.backend].accepted(lines: outcome.lines, bytes: outcome.bytes, now: now)
        } else {
            ledgers[outcome.backend].sendFailed(lines: outcome.lines, bytes: outcome.bytes)
        }
    }

    /// Reads the error queues that are due and counts what the ledgers settled.
    mutating func settle(now: UInt64, into core: inout RelayCore) {
        let aged = now &- Self.confirmationSlackNanoseconds
        for backend in ledgers.indices {
            if ledgers[backend].needsDrain(now: aged) {
                ledgers[backend].drained(sockets.takeErrors(backend), now: now)
            } else if !ledgers[backend].hasUnreportedFailures {
                continue
            }
            core.countDelivery(ledgers[backend].takeReport(), backend: identities[backend])
        }
        retired.settle(now: now, into: &core)
    }

    /// When a ledger's oldest packet will be due for confirmation, with the slack (so an idle
    /// worker wakes for it, and a busy one is never woken early for it).
    var nextConfirmation: UInt64? {
        var first = retired.nextConfirmation
        for index in ledgers.indices { first = earliest(first, ledgers[index].nextConfirmation) }
        return first.map { $0 &+ Self.confirmationSlackNanoseconds }
    }

    /// Whether every packet sent is confirmed, refused or failed.
    var isSettled: Bool {
        if retired.nextConfirmation != nil { return false }
        return ledgers.indices.allSatisfy { ledgers[$0].nextConfirmation == nil }
    }

    /// At exit: reads every error queue once more and counts what is still unconfirmed as such.
    mutating func finish(now: UInt64, into core: inout RelayCore) {
        for backend in ledgers.indices {
            ledgers[backend].drained(sockets.takeErrors(backend), now: now)
            ledgers[backend].closeAtExit()
            core.countDelivery(ledgers[backend].takeReport(), backend: identities[backend])
        }
        retired.finish(now: now, into: &core)
    }

    /// Follows the core's pool after its turn: completes a waiting membership change when no
    /// send is in flight, else reconnects backends whose address moved. A failed reconnect
    /// keeps the old address and is tried again next turn; a failed membership change keeps
    /// the old pool (the core counts it).
    mutating func follow(_ core: inout RelayCore, sendsInFlight: Int, now: UInt64) {
        if core.poolChangeReady(sendsInFlight: sendsInFlight), let next = core.pendingPool {
            changeMembership(to: next, core: &core, now: now)
            return
        }
        guard core.pendingPool == nil, core.pool.generation != generation, now >= reconnectRetryAt else { return }
        let wanted = core.pool.addresses
        var allMoved = true
        for backend in wanted.indices where wanted[backend] != addresses[backend] {
            do {
                // The old socket retires with the packets it sent: a late refusal still counts.
                try sockets.reconnect(backend, to: wanted[backend], sendBufferBytes: sendBufferBytes, retiring: &retired.sockets)
                retired.add(ledger: ledgers[backend], identity: identities[backend])
                ledgers[backend] = DeliveryLedger()
                addresses[backend] = wanted[backend]
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

    /// Switches to `next`'s sockets: a backend that stays at the same address keeps its socket
    /// and ledger; the others' sockets retire with their ledgers.
    private mutating func changeMembership(to next: BackendPool, core: inout RelayCore, now: UInt64) {
        let keep = core.pool.positions(in: next)
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
            core.abandonPoolChange()
            return
        }
        do { try core.completePoolChange() } catch {
            // The old pool stays in force (the core counts the failure): undo the retirement.
            while retired.sockets.count > retiredBefore { retired.sockets.closeSocket(at: retired.sockets.count - 1) }
            return
        }
        var reused = Array(repeating: false, count: ledgers.count)
        for old in kept.compactMap({ $0 }) { reused[old] = true }
        var newLedgers = next.backends.map { _ in DeliveryLedger() }
        for (new, old) in kept.enumerated() { if let old { newLedgers[new] = ledgers[old] } }
        for old in ledgers.indices where !reused[old] {
            retired.add(ledger: ledgers[old], identity: identities[old])
        }
        sockets = replacement
        ledgers = newLedgers
        identities = next.identities
        addresses = next.addresses
        generation = core.pool.generation
        retired.settle(now: now, into: &core)
    }
}

/// Sockets of backends that left the pool, each kept open with its ledger until every packet
/// sent on it is confirmed or refused (a refusal arrives a round trip after the send).
struct RetiredSockets: ~Copyable {
    /// The sockets, added to by `BackendSockets.rebuilt` in the order their ledgers are added.
    var sockets = RetiringSockets()
    private var ledgers: [DeliveryLedger] = []
    private var identities: [String] = []

    /// Adds the ledger of the socket most recently retired without one.
    mutating func add(ledger: DeliveryLedger, identity: String) {
        ledgers.append(ledger)
        identities.append(identity)
    }

    /// Reads the retired sockets' error queues, counts what settled, closes the settled ones.
    mutating func settle(now: UInt64, into core: inout RelayCore) {
        var index = 0
        while index < ledgers.count {
            ledgers[index].drained(sockets.takeErrors(index), now: now)
            core.countDelivery(ledgers[index].takeReport(), backend: identities[index])
            if ledgers[index].nextConfirmation == nil {
                sockets.closeSocket(at: index)
                ledgers.remove(at: index)
                identities.remove(at: index)
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
            ledgers[index].drained(sockets.takeErrors(index), now: now)
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
