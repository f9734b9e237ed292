import RelayKernel

/// One backend socket's account of what became of each packet offered to the kernel: every
/// packet gets exactly one outcome, and the counters never claim a delivery the network
/// reported lost.
///
/// UDP confirms nothing, but a backend's host that has no socket on the port (or a firewall
/// that rejects) answers a datagram with ICMP port unreachable, and the socket's error queue
/// (`BackendSockets.takeErrors(_:into:)`) then holds one entry for it, quoting the datagram's
/// start. The refusal arrives a round trip after the send, so a packet the kernel accepted is
/// *unconfirmed* until either
/// - a drain finds an error whose quote matches it (`PacketFingerprint.match(by:)`: a hashed
///   match before a match of the first bytes only; among equal matches, the oldest packet
///   takes it), or
/// - a complete drain finds it at least `confirmationDelay` old after that drain's errors were
///   attributed: no error came for it within the delay, so it is counted as sent — or, in an
///   episode of errors that may be rate-limited, as doubted once the episode has been watched
///   for `doubtWindow` after it.
///
/// ```
///   send ok ──► accepted ──► unconfirmed ──┬─ an error quotes it ────────────────► refused / unreachable
///   send -errno ──► sendErrors             ├─ complete drain at ≥ acceptedAt + delay ► sent, or doubted
///      ▲ an error quoting a recent failed  └─ relay exits first ──────────────────► unconfirmedAtExit
///        send is its echo: counted nowhere
/// ```
///
/// Invariant (`verifyInvariants()`): `accepted == sent + refused + unreachable + doubted +
/// unconfirmed + unconfirmedAtExit`, in packets, lines and bytes alike; every packet offered to
/// the kernel is in `accepted` or `sendErrors`, never both.
///
/// An error that quotes a packet whose send failed is that failure's echo, not a second loss:
/// a local firewall's reject fails the send with `EPERM` *and* queues an ICMP error about the
/// packet. Failed sends are remembered so their echoes are recognised rather than charged to a
/// packet that arrived: until the second complete drain after them (an echo is queued during
/// the send, or by a deferred softirq soon after), and at least `confirmationDelay`.
///
/// What is exact and what is not:
/// - Each packet's outcome is exact when the error queue is drained before it overflows
///   (`needsDrain`), every ICMP error returns within `confirmationDelay`, and the packets
///   differ in what an error quotes of them (up to `PacketFingerprint.hashedBytes`). Packets
///   that are equal there (a hot counter repeated whole) are told apart by age only: the
///   oldest is taken, which may move lines between `sent` and `refused`, never packets.
/// - An error that comes after its packet was counted as sent, or that matches nothing, is
///   counted in `unattributedLosses`.
/// - A host that rate-limits its ICMP errors reports only some refusals: see `doubted`.
///
/// Pure logic: the driver feeds it send results and drains with a monotonic clock
/// (nanoseconds). Steady state allocates nothing; the queue grows to the number of packets
/// sent within `confirmationDelay` plus one drain interval and stays at that size. Matching
/// an error costs O(1) for a quote of at least `hashedBytes` bytes (a hash index), and a scan
/// from the oldest packet for a shorter one (an empty quote matches the oldest at once).
public struct DeliveryLedger: Sendable, Equatable {
    /// Packets, with their lines and bytes.
    public struct Counts: Sendable, Equatable, CustomStringConvertible {
        public var packets: UInt64 = 0
        public var lines: UInt64 = 0
        public var bytes: UInt64 = 0

        /// Counts of `packets` packets holding `lines` lines in `bytes` bytes.
        public init(packets: UInt64 = 0, lines: UInt64 = 0, bytes: UInt64 = 0) {
            self.packets = packets
            self.lines = lines
            self.bytes = bytes
        }

        mutating func add(lines: Int, bytes: Int) {
            packets &+= 1
            self.lines &+= UInt64(lines)
            self.bytes &+= UInt64(bytes)
        }

        static func + (lhs: Counts, rhs: Counts) -> Counts {
            Counts(packets: lhs.packets &+ rhs.packets, lines: lhs.lines &+ rhs.lines, bytes: lhs.bytes &+ rhs.bytes)
        }

        static func - (lhs: Counts, rhs: Counts) -> Counts {
            Counts(packets: lhs.packets &- rhs.packets, lines: lhs.lines &- rhs.lines, bytes: lhs.bytes &- rhs.bytes)
        }

        public var description: String { "packets=\(packets) lines=\(lines) bytes=\(bytes)" }
    }

    /// How long after a packet was accepted a drain may count it as sent: longer than any ICMP
    /// round trip to the backend. 200 ms covers a data centre and most regions.
    public static let defaultConfirmationDelay: UInt64 = 200_000_000

    /// Packets accepted since the last drain after which `needsDrain` asks for one: well under
    /// the ~150 entries a default-sized error queue holds before the kernel drops entries.
    public static let defaultDrainEvery = 64

    /// How long after an ICMP error the packets sent on the socket may be doubted: Linux's
    /// default ICMP rate limit per host is one error a second.
    public static let defaultDoubtWindow: UInt64 = 1_000_000_000

    /// Linux's per-host ICMP rate limit: a token bucket of one error per `icmp_ratelimit`
    /// (1 000 ms) holding at most `XRLIM_BURST_FACTOR` (6) tokens (`inet_peer_xrlim_allow`).
    /// A host that sent more errors than this allows in an episode is not rate-limiting them.
    public static let icmpRateLimitBurst: UInt64 = 6

    /// Nanoseconds a packet stays unconfirmed at least.
    public let confirmationDelay: UInt64
    /// Accepted packets between drains that make `needsDrain` true.
    public let drainEvery: Int
    /// Nanoseconds after an ICMP error during which packets may be `doubted` (0: never).
    public let doubtWindow: UInt64

    /// Packets the kernel accepted for the backend (the send completed with all its bytes).
    public private(set) var accepted = Counts()
    /// Packets accepted and not refused within `confirmationDelay`: the host did not refuse
    /// them. As close to "delivered" as UDP can tell: they may still be lost on the network or
    /// dropped by a full receive buffer at the backend, which no one reports.
    public private(set) var sent = Counts()
    /// Packets accepted and then refused by the backend's host (or a firewall on the way) with
    /// ICMP (or ICMPv6) port unreachable. Their lines never reached a backend.
    public private(set) var refused = Counts()
    /// Packets accepted and then reported undeliverable by another ICMP error (host or network
    /// unreachable, TTL exceeded, too big for the path): lost on the way.
    public private(set) var unreachable = Counts()
    /// Packets the kernel did not accept: the send failed (`EPERM` from a local firewall,
    /// `ENOBUFS`, `EMSGSIZE`, a short send, or a refusal still pending from an earlier packet
    /// that was also there when the send was tried again). Nothing of them was transmitted.
    public private(set) var sendErrors = Counts()
    /// Packets accepted whose confirmation delay had not passed (or that no drain saw after it)
    /// when the relay exited: transmitted, but whether the backend refused them is unknown.
    public private(set) var unconfirmedAtExit = Counts()
    /// Packets accepted while the backend's host may have been hiding refusals, that got no
    /// error of their own: sent within `doubtWindow` of an ICMP error on this socket, in an
    /// episode of errors no more frequent than Linux's per-host ICMP rate limit allows
    /// (`icmpRateLimitBurst` plus one a second). A dead *remote* backend refuses about one
    /// packet a second and says nothing of the rest, so those cannot be called sent; whether
    /// they arrived is unknown. A host that refuses more often than that (loopback, which is
    /// exempt, or a host with the limit off) is reporting every refusal: nothing is doubted.
    /// The decision for such a packet waits until the episode has been watched for
    /// `doubtWindow` after it, so a burst's first errors alone never doom it.
    public private(set) var doubted = Counts()
    /// ICMP errors that matched no unconfirmed packet and no recent failed send: each arrived
    /// after the packet it reports had been counted as sent (it took longer than
    /// `confirmationDelay`), so `sent` over-counts by this many packets. Zero wherever the
    /// delay exceeds the round trip.
    public private(set) var unattributedLosses: UInt64 = 0
    /// ICMP errors that quoted a packet whose send had failed: the echo of a local firewall's
    /// reject, already counted in `sendErrors`.
    public private(set) var echoesOfFailedSends: UInt64 = 0

    /// Packets accepted and not yet confirmed, refused or closed out: the "in flight" gauge.
    public private(set) var unconfirmed = Counts()

    // The queue of accepted packets, in acceptance order. Packet number `s` (counted from the
    // ledger's start) lives in slot `s & (capacity - 1)`; `head` is the oldest still queued.
    // A packet an error matched is *settled* where it stands and leaves the queue when it
    // reaches the head; the head itself is never settled.
    // One element a packet (`QueuedPacket`): recording a packet checks one buffer's
    // uniqueness and bounds, where a column a field checked five.
    private var queue: [QueuedPacket] = []
    private var head: UInt64 = 0
    private var count = 0
    // A hash index over the queued packets of at least `hashedBytes` bytes: per bucket
    // (`hash & (capacity - 1)`), its oldest and newest packet number plus one (0: empty), and
    // per packet the next newer one of its bucket (`QueuedPacket.newerInBucket`).
    private var buckets: [IndexBucket] = []

    // Failed sends of the last `confirmationDelay` not yet echoed, oldest first, for their
    // echoes: a ring of power-of-two capacity that grows while they come faster than they age.
    private var failed: [FailedSend] = []
    private var failedHead = 0
    private var failedCount = 0

    /// Packets offered (accepted or failed) since the last complete drain: each may leave an
    /// entry in the error queue.
    private var offeredSinceDrain = 0
    /// When the drain under way began (`beginDrain`).
    private var drainTime: UInt64 = 0
    /// Complete drains so far.
    private var completedDrains: UInt64 = 0

    // The current episode of ICMP errors: errors no more than `doubtWindow` apart. Packets
    // accepted in `doubtedFrom...doubtedUntil` are doubted if the episode looks rate-limited.
    private var sawError = false
    private var episodeStart: UInt64 = 0
    private var episodeLastError: UInt64 = 0
    private var episodeErrors: UInt64 = 0
    private var doubtedFrom: UInt64 = 0
    private var doubtedUntil: UInt64 = 0

    /// Set by `closeAtExit()`: nothing more is accepted.
    public private(set) var isClosed = false
    /// The outcomes already handed out by `takeReport()`.
    private var reported = Report()

    /// An empty ledger.
    ///
    /// - Parameters:
    ///   - confirmationDelay: nanoseconds before an unrefused packet counts as sent.
    ///   - drainEvery: accepted packets between drains before `needsDrain` asks for one.
    ///   - doubtWindow: nanoseconds after an ICMP error during which packets may be doubted.
    public init(
        confirmationDelay: UInt64 = defaultConfirmationDelay, drainEvery: Int = defaultDrainEvery,
        doubtWindow: UInt64 = defaultDoubtWindow
    ) {
        precondition(drainEvery > 0)
        self.confirmationDelay = confirmationDelay
        self.drainEvery = drainEvery
        self.doubtWindow = doubtWindow
    }

    /// Records a packet the kernel accepted whole (its send completed with all its bytes).
    ///
    /// - Parameters:
    ///   - lines: the StatsD lines in the packet.
    ///   - bytes: its length.
    ///   - fingerprint: the packet's fingerprint, to match the errors that quote it.
    ///   - now: monotonic nanoseconds, not earlier than any time given before.
    /// - Precondition: the ledger is not closed.
    @inline(__always)
    public mutating func accepted(lines: Int, bytes: Int, fingerprint: PacketFingerprint = PacketFingerprint(), now: UInt64) {
        precondition(!isClosed, "a packet accepted after closeAtExit()")
        if count == queue.count { grow() }
        let number = head &+ UInt64(count)
        let slot = self.slot(number)
        queue[slot] = QueuedPacket(
            acceptedAt: now, fingerprint: fingerprint, lines: UInt32(clamping: lines), bytes: UInt32(clamping: bytes))
        count += 1
        index(number)
        offeredSinceDrain += 1
        accepted.add(lines: lines, bytes: bytes)
        unconfirmed.add(lines: lines, bytes: bytes)
    }

    /// Records a packet whose send failed (a result of `-errno`, or fewer bytes than the
    /// packet), remembering it a while so an echo of its failure is not charged to another
    /// packet.
    @inline(__always)
    public mutating func sendFailed(lines: Int, bytes: Int, fingerprint: PacketFingerprint = PacketFingerprint(), now: UInt64) {
        sendErrors.add(lines: lines, bytes: bytes)
        offeredSinceDrain += 1
        let mask = failed.count &- 1
        while failedCount > 0 && (failed[failedHead].echoed || !mayEcho(failedHead, at: now)) {
            failedHead = (failedHead + 1) & mask
            failedCount -= 1
        }
        if failedCount == failed.count { growFailures() }
        let slot = (failedHead + failedCount) & (failed.count - 1)
        failed[slot] = FailedSend(fingerprint: fingerprint, at: now, afterDrain: completedDrains)
        failedCount += 1
    }

    /// Whether the failed send in ring slot `slot` may still be echoed by an entry read at
    /// `time`: no second complete drain since it failed, or less than `confirmationDelay`.
    @inline(__always)
    private func mayEcho(_ slot: Int, at time: UInt64) -> Bool {
        completedDrains <= failed[slot].afterDrain &+ 1 || failed[slot].at &+ confirmationDelay >= time
    }

    /// Whether the driver should drain the backend's error queue now: enough packets were
    /// accepted since the last drain that the queue could overflow, or the oldest unconfirmed
    /// packet is old enough to be confirmed. O(1); call it once per loop turn.
    @inline(__always)
    public func needsDrain(now: UInt64) -> Bool {
        if offeredSinceDrain >= drainEvery { return true }
        return nextConfirmation.map { $0 <= now } ?? false
    }

    /// Starts a drain of the backend's error queue made at `now` (read the clock before
    /// draining): hand it each entry with `take(_:)`, then call `endDrain`.
    public mutating func beginDrain(now: UInt64) { drainTime = now }

    /// Attributes one error-queue entry: to the oldest unconfirmed packet whose hash it
    /// matches, else to the failed send it echoes so, else to the oldest unconfirmed packet
    /// whose first bytes it matches, else to such a failed send, else to no one
    /// (`unattributedLosses`). Entries of local origin are not counted: the send that caused
    /// them already failed.
    public mutating func take(_ error: SocketError) {
        guard error.kind != .local else { return }
        if let number = oldestQueued(quotedBy: error.quote, .hashed) {
            settle(number, error.kind)
        } else if echoFailure(quotedBy: error.quote, .hashed) {
            echoesOfFailedSends &+= 1
        } else if let number = oldestQueued(quotedBy: error.quote, .head) {
            settle(number, error.kind)
        } else if echoFailure(quotedBy: error.quote, .head) {
            echoesOfFailedSends &+= 1
        } else {
            unattributedLosses &+= 1
            noteError()
        }
    }

    /// Counts queued packet `number` as refused or unreachable, by the error's `kind`.
    private mutating func settle(_ number: UInt64, _ kind: SocketError.Kind) {
        let slot = self.slot(number)
        let (lines, bytes) = (Int(queue[slot].lines), Int(queue[slot].bytes))
        if kind == .refused { refused.add(lines: lines, bytes: bytes) } else { unreachable.add(lines: lines, bytes: bytes) }
        queue[slot].settled = true
        unconfirmed.packets -= 1
        unconfirmed.lines -= UInt64(lines)
        unconfirmed.bytes -= UInt64(bytes)
        while count > 0 && queue[self.slot(head)].settled { removeHead() }
        noteError()
    }

    /// Ends the drain begun at `now`: when it took every entry there was (`complete`, the
    /// drain did not stop at its limit), counts as sent every packet accepted at least
    /// `confirmationDelay` before `now`, oldest first, and as doubted those of an episode of
    /// errors that may have hidden refusals once the episode has been watched for
    /// `doubtWindow` after them (`decisionTime`). An incomplete drain confirms nothing: a
    /// refusal may still be queued behind the limit.
    public mutating func endDrain(now: UInt64, complete: Bool = true) {
        guard complete else {
            assert(verifyInvariants())
            return
        }
        offeredSinceDrain = 0
        completedDrains &+= 1
        // Per packet confirmed: what it settles is summed in locals and added to the counts
        // once, after the loop (stores to the counts each turn made the compiler reload them).
        var confirmed = Counts()
        var doubtedNow = Counts()
        while count > 0 {
            let acceptedAt = queue[slot(head)].acceptedAt
            // `decisionTime(ofAcceptedAt:)`, with the doubt it tests kept for below.
            let doubtful = isDoubted(acceptedAt: acceptedAt)
            let decision = doubtful ? max(acceptedAt &+ confirmationDelay, acceptedAt &+ doubtWindow) : acceptedAt &+ confirmationDelay
            guard decision <= now else { break }
            let (lines, bytes) = removeHead()
            if doubtful { doubtedNow.add(lines: lines, bytes: bytes) } else { confirmed.add(lines: lines, bytes: bytes) }
            while count > 0 && queue[slot(head)].settled { removeHead() }
        }
        unconfirmed.packets -= confirmed.packets + doubtedNow.packets
        unconfirmed.lines -= confirmed.lines + doubtedNow.lines
        unconfirmed.bytes -= confirmed.bytes + doubtedNow.bytes
        sent = sent + confirmed
        doubted = doubted + doubtedNow
        assert(verifyInvariants())
    }

    /// One whole drain at `now` of entries already taken off a queue (tests, replays).
    public mutating func drained(_ errors: [SocketError], now: UInt64) {
        beginDrain(now: now)
        for error in errors { take(error) }
        endDrain(now: now)
    }

    /// One whole drain at `now` of `refused` port-unreachable and `unreachable` other ICMP
    /// entries that quote nothing (as from a router that quotes only the UDP header): each
    /// matches the oldest unconfirmed packet.
    public mutating func drained(refused refusedCount: Int, unreachable unreachableCount: Int, now: UInt64) {
        drained(
            Array(repeating: SocketError(.refused), count: refusedCount)
                + Array(repeating: SocketError(.unreachable), count: unreachableCount),
            now: now)
    }

    /// Closes the account at exit: every packet still unconfirmed is counted in
    /// `unconfirmedAtExit`. Drain once more first (after waiting out what is left of the
    /// confirmation delay, if the shutdown allows) so that as few as possible remain.
    public mutating func closeAtExit() {
        while count > 0 {
            let wasSettled = queue[slot(head)].settled
            let (lines, bytes) = removeHead()
            if !wasSettled { unconfirmedAtExit.add(lines: lines, bytes: bytes) }
        }
        unconfirmed = Counts()
        isClosed = true
        assert(verifyInvariants())
    }

    /// Checks that every accepted packet is in exactly one of sent, refused, unreachable,
    /// doubted, unconfirmed and unconfirmed at exit, that the queue matches the unconfirmed
    /// gauge, that every unsettled packet of the hash index can be found through it, and that
    /// each bucket's newest packet is queued and links to none.
    public func verifyInvariants() -> Bool {
        guard accepted == sent + refused + unreachable + doubted + unconfirmed + unconfirmedAtExit else { return false }
        guard count <= queue.count, count == 0 || !queue[slot(head)].settled else { return false }
        // A link is a packet number plus one: the queued packets' are head + 1 ... head + count.
        func isQueued(_ link: UInt64) -> Bool { link &- 1 &- head < UInt64(count) }
        for bucket in buckets where bucket.oldest != 0 || bucket.newest != 0 {
            guard isQueued(bucket.oldest), isQueued(bucket.newest), queue[slot(bucket.newest &- 1)].newerInBucket == 0 else {
                return false
            }
        }
        var queued = Counts()
        for offset in 0..<UInt64(count) {
            let slot = self.slot(head &+ offset)
            guard !queue[slot].settled else { continue }
            queued.add(lines: Int(queue[slot].lines), bytes: Int(queue[slot].bytes))
            if isIndexed(queue[slot].fingerprint) && oldestQueued(quotedBy: queue[slot].fingerprint, .hashed).map({ $0 > head &+ offset }) ?? true {
                return false
            }
        }
        return queued == unconfirmed
    }

    /// The slot of packet number `number`.
    @inline(__always)
    private func slot(_ number: UInt64) -> Int { Int(truncatingIfNeeded: number) & (queue.count - 1) }

    /// Whether a packet of this fingerprint goes into the hash index: only those whose hash
    /// covers `hashedBytes`, the only ones a quote that long can match.
    @inline(__always)
    private func isIndexed(_ fingerprint: PacketFingerprint) -> Bool { fingerprint.length >= PacketFingerprint.hashedBytes }

    @inline(__always)
    private func bucket(_ fingerprint: PacketFingerprint) -> Int {
        Int(truncatingIfNeeded: fingerprint.hash) & (buckets.count - 1)
    }

    /// Adds queued packet `number` to the hash index, as its bucket's newest.
    @inline(__always)
    private mutating func index(_ number: UInt64) {
        let slot = self.slot(number)
        // The packet's own link is 0 already: it is the newest (`QueuedPacket`'s start, `grow`).
        guard isIndexed(queue[slot].fingerprint) else { return }
        let bucket = self.bucket(queue[slot].fingerprint)
        if buckets[bucket].oldest == 0 {
            buckets[bucket].oldest = number &+ 1
        } else {
            queue[self.slot(buckets[bucket].newest &- 1)].newerInBucket = number &+ 1
        }
        buckets[bucket].newest = number &+ 1
    }

    /// The oldest unsettled queued packet that `quote` matches with `strength`.
    private func oldestQueued(quotedBy quote: PacketFingerprint, _ strength: PacketFingerprint.Match) -> UInt64? {
        guard count > 0 else { return nil }
        if quote.length >= PacketFingerprint.hashedBytes {
            // Only hashed matches are possible, and only among indexed packets.
            guard strength == .hashed else { return nil }
            var link = buckets[bucket(quote)].oldest
            while link != 0 {
                let slot = self.slot(link &- 1)
                if !queue[slot].settled && queue[slot].fingerprint.match(by: quote) == .hashed { return link &- 1 }
                link = queue[slot].newerInBucket
            }
            return nil
        }
        for offset in 0..<UInt64(count) {
            let slot = self.slot(head &+ offset)
            if !queue[slot].settled && queue[slot].fingerprint.match(by: quote) == strength { return head &+ offset }
        }
        return nil
    }

    /// Finds the oldest remembered failed send that may still be echoed (`mayEcho`) and was
    /// not yet, that `quote` matches with `strength`, and marks it echoed.
    private mutating func echoFailure(quotedBy quote: PacketFingerprint, _ strength: PacketFingerprint.Match) -> Bool {
        for offset in 0..<failedCount {
            let slot = (failedHead + offset) & (failed.count - 1)
            guard !failed[slot].echoed, mayEcho(slot, at: drainTime),
                  failed[slot].fingerprint.match(by: quote) == strength else { continue }
            failed[slot].echoed = true
            return true
        }
        return false
    }

    /// Doubles the ring of failed sends (at least 16 slots), oldest first from slot 0.
    private mutating func growFailures() {
        let capacity = max(16, failed.count * 2)
        var sends = [FailedSend](repeating: FailedSend(), count: capacity)
        for offset in 0..<failedCount { sends[offset] = failed[(failedHead + offset) & (failed.count - 1)] }
        failed = sends
        failedHead = 0
    }

    /// Counts an ICMP error (not an echo) into the current episode, opening a new one when the
    /// last error is more than `doubtWindow` old.
    private mutating func noteError() {
        guard doubtWindow > 0 else { return }
        if !sawError || drainTime > doubtedUntil {
            // The packets still unconfirmed when the host began refusing are in the episode too.
            episodeStart = drainTime
            episodeErrors = 0
            doubtedFrom = count > 0 ? min(queue[slot(head)].acceptedAt, drainTime) : drainTime
        }
        sawError = true
        episodeErrors &+= 1
        episodeLastError = drainTime
        doubtedUntil = drainTime &+ doubtWindow
    }

    /// Whether the current episode's errors are few enough to be all a rate-limiting host
    /// would send: then packets without an error of their own may have been refused silently.
    private var episodeMayHideRefusals: Bool {
        guard sawError && doubtWindow > 0 else { return false }
        let seconds = (episodeLastError &- episodeStart) / 1_000_000_000
        return episodeErrors <= Self.icmpRateLimitBurst &+ 1 &+ seconds
    }

    /// Takes the head packet off the queue (and the hash index); the caller counts it.
    @inline(__always)
    @discardableResult
    private mutating func removeHead() -> (lines: Int, bytes: Int) {
        let slot = self.slot(head)
        if isIndexed(queue[slot].fingerprint) {
            let bucket = self.bucket(queue[slot].fingerprint)
            // The head is its bucket's oldest if it is in the index at all (a settled packet
            // may have been left out when the queue grew).
            if buckets[bucket].oldest == head &+ 1 {
                buckets[bucket].oldest = queue[slot].newerInBucket
                if buckets[bucket].oldest == 0 { buckets[bucket].newest = 0 }
            }
        }
        head &+= 1
        count -= 1
        return (Int(queue[slot].lines), Int(queue[slot].bytes))
    }

    /// Doubles the queue (at least 64 slots), keeping every packet's number, and rebuilds the
    /// hash index over the unsettled ones.
    private mutating func grow() {
        let capacity = max(64, queue.count * 2)
        let mask = capacity - 1
        var packets = [QueuedPacket](repeating: QueuedPacket(), count: capacity)
        for offset in 0..<UInt64(count) {
            var packet = queue[slot(head &+ offset)]
            // The index is built again below.
            packet.newerInBucket = 0
            packets[Int(truncatingIfNeeded: head &+ offset) & mask] = packet
        }
        // `consume`: with `packets` still alive, the index's first write below found the
        // queue shared and copied it whole (Swift's copy-on-write), in every growth.
        queue = consume packets
        buckets = [IndexBucket](repeating: IndexBucket(), count: capacity)
        for offset in 0..<UInt64(count) where !queue[slot(head &+ offset)].settled { index(head &+ offset) }
    }
}

extension DeliveryLedger {
    /// One accepted packet in the queue.
    fileprivate struct QueuedPacket: Sendable, Equatable {
        /// When the kernel accepted it (monotonic nanoseconds).
        var acceptedAt: UInt64 = 0
        /// What an error that quotes it matches.
        var fingerprint = PacketFingerprint()
        /// The next newer queued packet of its hash bucket, plus one (0: none).
        var newerInBucket: UInt64 = 0
        var lines: UInt32 = 0
        var bytes: UInt32 = 0
        /// An error matched it; it leaves the queue when it reaches the head.
        var settled = false
    }

    /// A failed send remembered for the ICMP echo of its failure.
    fileprivate struct FailedSend: Sendable, Equatable {
        /// What its echo would quote.
        var fingerprint = PacketFingerprint()
        /// When it failed (monotonic nanoseconds).
        var at: UInt64 = 0
        /// How many complete drains there had been when it failed.
        var afterDrain: UInt64 = 0
        /// An echo of it was taken.
        var echoed = false
    }

    /// One bucket of the hash index: its oldest and newest packet number, plus one (0: empty).
    fileprivate struct IndexBucket: Sendable, Equatable {
        var oldest: UInt64 = 0
        var newest: UInt64 = 0
    }
}

extension DeliveryLedger: SocketErrorSink {}

extension DeliveryLedger {
    /// What became of packets since the last `takeReport()`: the part of each final outcome
    /// not yet added to the relay's counters.
    public struct Report: Sendable, Equatable {
        public var sent = Counts()
        public var refused = Counts()
        public var unreachable = Counts()
        public var sendErrors = Counts()
        public var unconfirmedAtExit = Counts()
        public var doubted = Counts()
        public var unattributedLosses: UInt64 = 0
        /// A TCP backend's stream outcomes (`TCPBackendLink`); zero for a UDP backend.
        public var stream = StreamCounts()

        /// Whether nothing happened.
        public var isEmpty: Bool { self == Report() }
    }

    /// The outcomes since the last call, so each is counted once.
    public mutating func takeReport() -> Report {
        let now = Report(
            sent: sent, refused: refused, unreachable: unreachable, sendErrors: sendErrors,
            unconfirmedAtExit: unconfirmedAtExit, doubted: doubted, unattributedLosses: unattributedLosses)
        let previous = reported
        reported = now
        return Report(
            sent: now.sent - previous.sent, refused: now.refused - previous.refused,
            unreachable: now.unreachable - previous.unreachable, sendErrors: now.sendErrors - previous.sendErrors,
            unconfirmedAtExit: now.unconfirmedAtExit - previous.unconfirmedAtExit,
            doubted: now.doubted - previous.doubted,
            unattributedLosses: now.unattributedLosses &- previous.unattributedLosses)
    }

    /// Whether failed sends have not been reported yet (they need no drain, only a report).
    public var hasUnreportedFailures: Bool { sendErrors != reported.sendErrors }

    /// When the oldest unconfirmed packet can be confirmed by a drain, if any is unconfirmed.
    public var nextConfirmation: UInt64? {
        count > 0 ? decisionTime(ofAcceptedAt: queue[slot(head)].acceptedAt) : nil
    }

    /// When a packet accepted at `at` with no error of its own can be counted: after the
    /// confirmation delay; if it falls in an episode of errors that may be rate-limited, not
    /// before the episode has been watched for `doubtWindow` after it (more errors in that
    /// time show the host is not rate-limiting, and the packet is sent after all).
    @inline(__always)
    private func decisionTime(ofAcceptedAt at: UInt64) -> UInt64 {
        let confirmed = at &+ confirmationDelay
        return isDoubted(acceptedAt: at) ? max(confirmed, at &+ doubtWindow) : confirmed
    }

    /// Whether a packet accepted at `at` with no error of its own would be doubted now.
    @inline(__always)
    private func isDoubted(acceptedAt at: UInt64) -> Bool {
        episodeMayHideRefusals && at >= doubtedFrom && at <= doubtedUntil
    }

    /// Drains backend `index`'s error queue in `sockets` into this ledger, as one drain at
    /// `now` (see `beginDrain`, `take`, `endDrain`).
    ///
    /// - Returns: what the drain counted.
    @discardableResult
    public mutating func drain(_ index: Int, of sockets: borrowing BackendSockets, now: UInt64) -> SocketErrorReport {
        beginDrain(now: now)
        let report = sockets.takeErrors(index, into: &self)
        endDrain(now: now, complete: !report.reachedLimit)
        return report
    }

    /// Drains retired socket `index`'s error queue into this ledger, as one drain at `now`.
    @discardableResult
    public mutating func drain(_ index: Int, of sockets: borrowing RetiringSockets, now: UInt64) -> SocketErrorReport {
        beginDrain(now: now)
        let report = sockets.takeErrors(index, into: &self)
        endDrain(now: now, complete: !report.reachedLimit)
        return report
    }
}
