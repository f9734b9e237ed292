import RelayKernel

/// One backend socket's account of what became of each packet the kernel accepted: the counters
/// never claim a delivery the network reported lost.
///
/// UDP confirms nothing, but a backend's host that has no socket on the port answers each
/// datagram with ICMP port unreachable, and the backend socket's error queue
/// (`BackendSockets.takeErrors(_:)`) then holds exactly one entry per refused datagram. The
/// refusal arrives a round trip after the send, so a packet the kernel accepted is
/// *unconfirmed* until either
/// - a drain of the error queue attributes a refusal to it: refusals go to the oldest
///   unconfirmed packets first (FIFO), or
/// - a drain finds it at least `confirmationDelay` old after the refusals of that drain were
///   attributed: no refusal came for it within the delay, so it is counted as sent.
///
/// ```
///   send CQE ok ──► accepted ──► unconfirmed ──┬─ drain attributes an ICMP error ──► refused / unreachable
///   send CQE -errno ──► sendErrors             ├─ drain at ≥ acceptedAt + delay ───► sent
///                                              ├─ relay exits first ──────────────► unconfirmedAtExit
///                                              └─ due within 1 s of an ICMP error ► doubted
/// ```
///
/// Invariant (`verifyInvariants()`): `accepted == sent + refused + unreachable + unconfirmed +
/// unconfirmedAtExit + doubted`, in packets, lines and bytes alike; every packet offered to the kernel is
/// in `accepted` or `sendErrors`.
///
/// What is exact and what is not:
/// - Packet counts are exact when the error queue is drained before it overflows (`needsDrain`)
///   and every ICMP error returns within `confirmationDelay`; an error that comes later is
///   counted in `unattributedLosses` if nothing is left to attribute it to.
/// - Line and byte counts are exact whenever the refused packets are the oldest unconfirmed
///   ones: a dead backend, a backend coming back, any backend with all or none refused. When a
///   backend dies mid-stream, the refusals of its first refused packets are attributed to the
///   packets still unconfirmed from just before (at most `confirmationDelay` of traffic), so
///   lines can move between `sent` and `refused` in that window; packet totals stay exact.
///
/// Pure logic: the driver feeds it send results and drain reports with a monotonic clock
/// (nanoseconds). Steady state allocates nothing; the unconfirmed queue grows to the number of
/// packets sent within `confirmationDelay` plus one drain interval and stays at that size.
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

    /// Nanoseconds a packet stays unconfirmed at least.
    public let confirmationDelay: UInt64
    /// Accepted packets between drains that make `needsDrain` true.
    public let drainEvery: Int

    /// Packets the kernel accepted for the backend (the send completed with all its bytes).
    public private(set) var accepted = Counts()
    /// Packets accepted and not refused within `confirmationDelay`: the host did not refuse
    /// them. As close to "delivered" as UDP can tell: they may still be lost on the network or
    /// dropped by a full receive buffer at the backend, which no one reports.
    public private(set) var sent = Counts()
    /// Packets accepted and then refused by the backend's host with ICMP (or ICMPv6) port
    /// unreachable: nothing listened on the port. Their lines never reached a backend.
    public private(set) var refused = Counts()
    /// Packets accepted and then reported undeliverable by another ICMP error (host or network
    /// unreachable, TTL exceeded, too big for the path): lost on the way.
    public private(set) var unreachable = Counts()
    /// Packets the kernel did not accept: the send failed (`ECONNREFUSED` for a refusal still
    /// pending from an earlier packet, `ENOBUFS`, `EMSGSIZE`, a short send). Nothing of them
    /// was transmitted.
    public private(set) var sendErrors = Counts()
    /// Packets accepted whose confirmation delay had not passed (or that no drain saw after it)
    /// when the relay exited: transmitted, but whether the backend refused them is unknown.
    public private(set) var unconfirmedAtExit = Counts()
    /// Packets accepted while the backend's host was refusing — within `doubtWindow` after an
    /// ICMP error on this socket — that got no error of their own. Linux sends at most about one
    /// ICMP error per second to a host (`net.ipv4.icmp_ratelimit`; loopback is exempt), so of a
    /// dead remote backend's packets only about one a second is ever refused: the others cannot
    /// be called sent. Whether they arrived is unknown.
    public private(set) var doubted = Counts()
    /// ICMP errors that found no unconfirmed packet to attribute to: each arrived after the
    /// packet it reports had been counted as sent (it took longer than `confirmationDelay`), so
    /// `sent` over-counts by this many packets. Zero wherever the delay exceeds the round trip.
    public private(set) var unattributedLosses: UInt64 = 0

    /// Packets accepted and not yet confirmed, refused or closed out: the "in flight" gauge.
    public private(set) var unconfirmed = Counts()

    /// The unconfirmed packets, oldest first, in a ring of power-of-two capacity: when each was
    /// accepted (monotonic nanoseconds), its lines and its bytes.
    private var acceptedAt: [UInt64] = []
    private var lineCounts: [UInt32] = []
    private var byteCounts: [UInt32] = []
    private var head = 0
    private var count = 0
    /// Packets accepted since the last drain.
    private var acceptedSinceDrain = 0
    /// Set by `closeAtExit()`: nothing more is accepted.
    public private(set) var isClosed = false
    /// The outcomes already handed out by `takeReport()`.
    private var reported = Report()

    /// An empty ledger.
    ///
    /// - Parameters:
    ///   - confirmationDelay: nanoseconds before an unrefused packet counts as sent.
    ///   - drainEvery: accepted packets between drains before `needsDrain` asks for one.
    public init(
        confirmationDelay: UInt64 = defaultConfirmationDelay, drainEvery: Int = defaultDrainEvery,
        doubtWindow: UInt64 = defaultDoubtWindow
    ) {
        precondition(drainEvery > 0)
        self.confirmationDelay = confirmationDelay
        self.drainEvery = drainEvery
        self.doubtWindow = doubtWindow
    }

    /// How long after an ICMP error the packets sent on the socket are doubted rather than
    /// confirmed: Linux's default ICMP rate limit per host is one per second.
    public static let defaultDoubtWindow: UInt64 = 1_000_000_000

    /// Nanoseconds after an ICMP error during which accepted packets are `doubted`.
    public let doubtWindow: UInt64
    /// Packets accepted in `doubtedFrom...doubtedUntil` are doubted: from an ICMP error to the
    /// window's end after the last error that followed it within the window.
    private var doubtedFrom: UInt64 = 0
    private var doubtedUntil: UInt64 = 0
    /// Whether any ICMP error was seen yet (the range means nothing before).
    private var sawError = false

    /// Records a packet the kernel accepted whole (its send completed with all its bytes).
    ///
    /// - Parameters:
    ///   - lines: the StatsD lines in the packet.
    ///   - bytes: its length.
    ///   - now: monotonic nanoseconds, not earlier than any time given before.
    /// - Precondition: the ledger is not closed.
    @inline(__always)
    public mutating func accepted(lines: Int, bytes: Int, now: UInt64) {
        precondition(!isClosed, "a packet accepted after closeAtExit()")
        if count == acceptedAt.count { grow() }
        let slot = (head + count) & (acceptedAt.count - 1)
        acceptedAt[slot] = now
        lineCounts[slot] = UInt32(clamping: lines)
        byteCounts[slot] = UInt32(clamping: bytes)
        count += 1
        acceptedSinceDrain += 1
        accepted.add(lines: lines, bytes: bytes)
        unconfirmed.add(lines: lines, bytes: bytes)
    }

    /// Records a packet whose send failed (a CQE with `-errno`, or fewer bytes than the packet).
    @inline(__always)
    public mutating func sendFailed(lines: Int, bytes: Int) {
        sendErrors.add(lines: lines, bytes: bytes)
    }

    /// Whether the driver should drain the backend's error queue now: enough packets were
    /// accepted since the last drain that the queue could overflow, or the oldest unconfirmed
    /// packet is old enough to be confirmed. O(1); call it once per loop turn.
    @inline(__always)
    public func needsDrain(now: UInt64) -> Bool {
        if acceptedSinceDrain >= drainEvery { return true }
        return count > 0 && acceptedAt[head] &+ confirmationDelay <= now
    }

    /// Records one drain of the backend's error queue, made at `now` (read the clock before
    /// draining): attributes its losses to the oldest unconfirmed packets, then counts as sent
    /// every packet accepted at least `confirmationDelay` before `now`.
    ///
    /// - Parameters:
    ///   - refused: ICMP port-unreachable entries (`SocketErrorReport.refused`).
    ///   - unreachable: other ICMP error entries (`SocketErrorReport.unreachable`).
    ///   - now: when the drain began, in monotonic nanoseconds.
    public mutating func drained(refused refusedCount: Int, unreachable unreachableCount: Int, now: UInt64) {
        acceptedSinceDrain = 0
        for lost in 0..<(refusedCount + unreachableCount) {
            guard count > 0 else {
                unattributedLosses &+= UInt64(refusedCount + unreachableCount - lost)
                break
            }
            let (lines, bytes) = removeOldest()
            if lost < refusedCount { refused.add(lines: lines, bytes: bytes) } else { unreachable.add(lines: lines, bytes: bytes) }
        }
        if refusedCount + unreachableCount > 0 && doubtWindow > 0 {
            // The host will stay silent about most packets for a while (ICMP rate limit): the
            // ones still unconfirmed and those sent from now on are doubted, until a window
            // passes with no error.
            if !sawError || now > doubtedUntil { doubtedFrom = count > 0 ? min(acceptedAt[head], now) : now }
            sawError = true
            doubtedUntil = now &+ doubtWindow
        }
        while count > 0, acceptedAt[head] &+ confirmationDelay <= now {
            let doubtful = sawError && acceptedAt[head] >= doubtedFrom && acceptedAt[head] <= doubtedUntil
            let (lines, bytes) = removeOldest()
            if doubtful { doubted.add(lines: lines, bytes: bytes) } else { sent.add(lines: lines, bytes: bytes) }
        }
        assert(verifyInvariants())
    }

    /// Closes the account at exit: every packet still unconfirmed is counted in
    /// `unconfirmedAtExit`. Drain once more first (after waiting out what is left of the
    /// confirmation delay, if the shutdown allows) so that as few as possible remain.
    public mutating func closeAtExit() {
        while count > 0 {
            let (lines, bytes) = removeOldest()
            unconfirmedAtExit.add(lines: lines, bytes: bytes)
        }
        isClosed = true
        assert(verifyInvariants())
    }

    /// Checks that every accepted packet is in exactly one of sent, refused, unreachable,
    /// unconfirmed and unconfirmed at exit, and that the queue matches the unconfirmed gauge.
    public func verifyInvariants() -> Bool {
        guard accepted == sent + refused + unreachable + doubted + unconfirmed + unconfirmedAtExit else { return false }
        guard UInt64(count) == unconfirmed.packets, count <= acceptedAt.count else { return false }
        var lines: UInt64 = 0
        var bytes: UInt64 = 0
        for offset in 0..<count {
            let slot = (head + offset) & (acceptedAt.count - 1)
            lines += UInt64(lineCounts[slot])
            bytes += UInt64(byteCounts[slot])
        }
        return lines == unconfirmed.lines && bytes == unconfirmed.bytes
    }

    /// Takes the oldest unconfirmed packet off the queue.
    @inline(__always)
    private mutating func removeOldest() -> (lines: Int, bytes: Int) {
        let lines = Int(lineCounts[head])
        let bytes = Int(byteCounts[head])
        head = (head + 1) & (acceptedAt.count - 1)
        count -= 1
        unconfirmed.packets -= 1
        unconfirmed.lines -= UInt64(lines)
        unconfirmed.bytes -= UInt64(bytes)
        return (lines, bytes)
    }

    /// Doubles the ring (at least 64 slots), keeping the packets in order from slot 0.
    private mutating func grow() {
        let capacity = max(64, acceptedAt.count * 2)
        var times = [UInt64](repeating: 0, count: capacity)
        var lines = [UInt32](repeating: 0, count: capacity)
        var bytes = [UInt32](repeating: 0, count: capacity)
        for offset in 0..<count {
            let slot = (head + offset) & (acceptedAt.count - 1)
            times[offset] = acceptedAt[slot]
            lines[offset] = lineCounts[slot]
            bytes[offset] = byteCounts[slot]
        }
        acceptedAt = times
        lineCounts = lines
        byteCounts = bytes
        head = 0
    }
}

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
        count > 0 ? acceptedAt[head] &+ confirmationDelay : nil
    }

    /// Records one drain of the backend's error queue; see `drained(refused:unreachable:now:)`.
    /// Local-origin entries are not counted: the send that caused them already failed.
    @inline(__always)
    public mutating func drained(_ report: SocketErrorReport, now: UInt64) {
        drained(refused: report.refused, unreachable: report.unreachable, now: now)
    }
}
