
import RelayKernel
import Glibc

/// The per-datagram work of a worker, with no I/O: split into lines, check each, route it and
/// pack it into its backend's batch. Counters are plain fields; nothing here allocates.
///
/// `--validate` and `--hash-key` are fixed for a processor (a worker's, for its life). Each of
/// their four pairs has its own copy of the line loop, specialised on a `LineValidation` and a
/// `KeyPolicy` type: the mode is tested once per datagram, never per line.
public struct DatagramProcessor: ~Copyable {
    /// The batches being packed, one per backend.
    public var assembler: BatchAssembler
    /// Where each metric goes; the worker updates its health view between loop turns.
    public var router: Router
    /// This worker's counters.
    public var counters: RelayCounters
    /// Primary buckets of recently seen names.
    private var primaries: PrimaryCache
    /// `--validate`.
    public let validation: ValidationMode
    /// `--hash-key`.
    public let hashKey: HashKeyMode
    /// Scratch room for `name+tags` keys.
    private var routingKey: RoutingKey
    /// Whether a mirror pool gets copies (`--mirror`); tested once per datagram.
    public let isMirroring: Bool
    /// Where a mirrored line goes in the mirror pool (a one-backend stand-in without a mirror).
    public let mirrorRouter: Router
    /// Which keys are mirrored.
    public let mirrorSample: MirrorSample

    /// A processor for `router`'s backends, counting into `counters`.
    ///
    /// - Precondition: `counters` counts as many backends as `router` routes to.
    public init(
        router: Router, packetBytes: Int, maxDatagramBytes: Int, counters: RelayCounters,
        validation: ValidationMode = .loose, hashKey: HashKeyMode = .name, mirror: MirrorPool? = nil
    ) throws(Errno) {
        precondition(counters.backendCount == router.backendCount, "counters for another pool")
        self.router = router
        self.validation = validation
        self.hashKey = hashKey
        isMirroring = mirror != nil
        mirrorRouter = mirror.map { Router(pool: $0.pool) } ?? Router(backendCount: 1)
        mirrorSample = mirror?.sample ?? MirrorSample(rate: 1)
        routingKey = RoutingKey(maxLineBytes: maxDatagramBytes)
        assembler = try BatchAssembler(
            backendCount: router.backendCount, mirrorBackendCount: mirror?.count ?? 0, packetBytes: packetBytes,
            maxLineBytes: maxDatagramBytes)
        self.counters = counters
        primaries = PrimaryCache(backendCount: router.backendCount)
    }

    /// A processor for `router`'s backends, counting from zero.
    public init(
        router: Router, packetBytes: Int, maxDatagramBytes: Int, validation: ValidationMode = .loose,
        hashKey: HashKeyMode = .name, mirror: MirrorPool? = nil
    ) throws(Errno) {
        try self.init(
            router: router, packetBytes: packetBytes, maxDatagramBytes: maxDatagramBytes,
            counters: RelayCounters(backendCount: router.backendCount), validation: validation, hashKey: hashKey,
            mirror: mirror)
    }

    /// Handles one received buffer: counts a truncated or malformed one, relays a whole one.
    @inline(__always)
    public mutating func receive(_ payload: ReceivedPayload, _ bytes: RawSpan, now: UInt64) {
        switch payload {
        case .datagram(let length):
            counters[.datagramsReceived] &+= 1
            counters[.bytesReceived] &+= UInt64(length)
            relay(datagram: bytes, now: now)
        case .truncated:
            // Never forward part of a datagram: its cut last line would be a wrong value.
            counters[.datagramsTruncated] &+= 1
        case .malformed:
            counters[.datagramsMalformedHeader] &+= 1
        }
    }

    /// Splits `datagram` into lines and packs each valid one for its backend (and, when its
    /// key is sampled, a copy for the mirror pool's).
    @inline(__always)
    public mutating func relay(datagram: RawSpan, now: UInt64) {
        if isMirroring {
            relayMirroring(datagram, now: now)
        } else {
            relay(datagram, now: now, NotMirroring.self)
        }
    }

    /// `relay(datagram:now:)` with a mirror pool, out of line: its four line loops are not
    /// inlined beside the no-mirror ones (which would double the inlined code of every caller).
    @inline(never)
    private mutating func relayMirroring(_ datagram: RawSpan, now: UInt64) {
        relay(datagram, now: now, Mirroring.self)
    }

    /// `relay(datagram:now:)` for one mirror mode: the line loops are specialised on it too, so
    /// a relay without a mirror pays nothing for it per line.
    @inline(__always)
    private mutating func relay<Mirror: MirrorMode>(_ datagram: RawSpan, now: UInt64, _: Mirror.Type) {
        switch (validation, hashKey) {
        case (.loose, .name): relay(datagram, now: now, LooseValidation.self, NameKey.self, Mirror.self)
        case (.strict, .name): relay(datagram, now: now, StrictValidation.self, NameKey.self, Mirror.self)
        case (.loose, .nameAndTags): relay(datagram, now: now, LooseValidation.self, NameAndTagsKey.self, Mirror.self)
        case (.strict, .nameAndTags): relay(datagram, now: now, StrictValidation.self, NameAndTagsKey.self, Mirror.self)
        }
    }

    /// A line scanned, checked and hashed, waiting to be routed and packed.
    private struct Pending {
        var line: Range<Int>
        var key: Range<Int>
        /// Whether the routing key is the written-out `name+tags` key rather than `key`'s bytes.
        var isComposite: Bool
        var probe: PrimaryCache.Probe
    }

    /// The line loop for one `--validate` mode and one `--hash-key` mode.
    ///
    /// Software-pipelined by one line: a line's cache set is read right after its key is
    /// hashed, and the line is routed and packed only after the next line is hashed, so that
    /// read overlaps the next hash instead of stalling. Lines are packed in datagram order.
    @inline(__always)
    private mutating func relay<Validation: LineValidation, Key: KeyPolicy, Mirror: MirrorMode>(
        _ datagram: RawSpan, now: UInt64, _: Validation.Type, _: Key.Type, _: Mirror.Type
    ) {
        var offset = 0
        let mayContainNul = datagram.contains(byte: 0)
        let mayContainCarriageReturn = datagram.contains(byte: UInt8(ascii: "\r"))
        var pending: Pending?
        while let line = LineScanner.next(
            in: datagram, from: &offset, mayContainNul: mayContainNul, mayContainCarriageReturn: mayContainCarriageReturn) {
            switch line {
            case .valid(let start, let end, let key):
                counters[.linesReceived] &+= 1
                if let reason = Validation.check(datagram, line: start..<end, key: key) {
                    counters[.dropped(reason)] &+= 1
                    continue
                }
                let (hash, isComposite) = Key.hash(datagram, line: start..<end, key: key, scratch: &routingKey)
                let probe = primaries.probe(hash)
                if let previous = pending {
                    if Mirror.isOn { mirrorIfSampled(previous, in: datagram, now: now) }
                    pack(previous, in: datagram, now: now)
                }
                pending = Pending(line: start..<end, key: key, isComposite: isComposite, probe: probe)
            case .empty:
                counters[.emptyLines] &+= 1
            case .malformed(let reason):
                counters[.linesReceived] &+= 1
                counters[.dropped(reason)] &+= 1
            }
        }
        if let previous = pending {
            if Mirror.isOn { mirrorIfSampled(previous, in: datagram, now: now) }
            pack(previous, in: datagram, now: now)
        }
    }

    /// Routes one valid line of `datagram` by its probed hash (and, on a ring's cache miss or
    /// rehash, the md5 of its key) and packs it into its backend's batch.
    @inline(__always)
    private mutating func pack(_ pending: Pending, in datagram: RawSpan, now: UInt64) {
        let line = datagram.extracting(pending.line)
        let decision: Router.Decision
        if pending.isComposite && router.hashMode != .jump {
            // A ring places the key by its md5: write the name+tags key out. (Under `jump`
            // the hash is all that routes it.)
            decision = Self.routeWritten(pending, in: datagram, scratch: &routingKey, cache: &primaries, router: router)
        } else {
            let key = datagram.extracting(pending.key)
            let primary = primaries.primary(for: pending.probe, key: key, router: router)
            decision = router.route(key: key, hash: pending.probe.hash, primary: primary)
        }
        let backend: Int
        switch decision {
        case .send(let primary):
            // Every backend is down under rehash or drop: sent to its primary as if healthy.
            if router.downCount != 0 && router.isFailingOpen { counters[.linesFailOpen] &+= 1 }
            backend = primary
        case .hold(let primary):
            // Batched as usual; the worker holds the packet instead of sending it.
            backend = primary
        case .rehash(let primary, let other):
            counters[.linesRehashedAway, backend: primary] &+= 1
            backend = other
        case .drop(let primary):
            counters[.linesDroppedBackendDown, backend: primary] &+= 1
            return
        }
        if assembler.append(line, to: backend, now: now) {
            counters[.linesForwarded] &+= 1
        } else {
            counters[.linesDroppedNoSendBuffer] &+= 1
        }
    }

    /// Under `Mirroring`, before the line is packed for the primary pool: packs a copy for the
    /// mirror pool when its key is sampled, whatever becomes of the line in the primary pool.
    /// Apart from `pack`, which stays as it is without a mirror (its inlining unchanged).
    @inline(__always)
    private mutating func mirrorIfSampled(_ pending: Pending, in datagram: RawSpan, now: UInt64) {
        guard mirrorSample.contains(hash: pending.probe.hash) else { return }
        mirror(pending, datagram.extracting(pending.line), in: datagram, now: now)
    }

    /// Packs a copy of a sampled line for its mirror backend (by the mirror's hash mode, with
    /// no health view), or counts it dropped when the mirror's send slots are all in use.
    @inline(__always)
    private mutating func mirror(_ pending: Pending, _ line: RawSpan, in datagram: RawSpan, now: UInt64) {
        let backend: Int
        if mirrorRouter.hashMode == .jump {
            backend = JumpHash.bucket(for: pending.probe.hash, buckets: mirrorRouter.backendCount)
        } else if pending.isComposite {
            backend = Self.mirrorBackendWritten(pending, in: datagram, scratch: &routingKey, router: mirrorRouter)
        } else {
            backend = mirrorRouter.primary(key: datagram.extracting(pending.key), hash: pending.probe.hash)
        }
        if assembler.appendMirror(line, to: backend, now: now) {
            counters[.mirrorLines] &+= 1
        } else {
            counters[.mirrorLinesDroppedNoSendBuffer] &+= 1
        }
    }

    /// The mirror backend of a line by its written-out `name+tags` key (for a ring's md5).
    @inline(never)
    private static func mirrorBackendWritten(
        _ pending: Pending, in datagram: RawSpan, scratch: inout RoutingKey, router: borrowing Router
    ) -> Int {
        scratch.write(datagram, line: pending.line, key: pending.key)
        return router.primary(key: scratch.written.span.bytes, hash: pending.probe.hash)
    }

    /// Routes a line by its written-out `name+tags` key (for a ring's md5). Static, on its
    /// parts, so that the key borrowed from the scratch and the cache updated are seen apart.
    @inline(__always)
    private static func routeWritten(
        _ pending: Pending, in datagram: RawSpan, scratch: inout RoutingKey, cache: inout PrimaryCache, router: borrowing Router
    ) -> Router.Decision {
        scratch.write(datagram, line: pending.line, key: pending.key)
        let key = scratch.written.span.bytes
        let primary = cache.primary(for: pending.probe, key: key, router: router)
        return router.route(key: key, hash: pending.probe.hash, primary: primary)
    }

    /// Frees the slot of a packet whose send completed and says what it carried; what became
    /// of it is counted from its backend's delivery ledger (`BackendConnections`).
    ///
    /// - Parameter result: the CQE's `res`: bytes sent, or `-errno`.
    @inline(__always)
    public mutating func sendCompleted(slot: Int, result: Int32) -> SendOutcome {
        let sent = assembler.completeSend(slot)
        return SendOutcome(backend: sent.backend, lines: sent.lines, bytes: sent.bytes, result: result)
    }
}

/// One packet's send, as completed: where it went, what it carried and the kernel's answer.
public struct SendOutcome: Sendable, Equatable {
    /// The backend's index in the pool it was sent by.
    public var backend: Int
    /// Lines and bytes in the packet.
    public var lines: Int
    public var bytes: Int
    /// Bytes sent, or `-errno`.
    public var result: Int32
    /// What identifies the packet in an ICMP error that quotes it (filled by `RelayCore`).
    public var fingerprint = PacketFingerprint()

    /// Whether the kernel took the whole packet.
    public var isAccepted: Bool { result >= 0 && Int(result) == bytes }
}

/// Whether a processor's line loop packs copies for a mirror pool: a type parameter, so the
/// loop without a mirror is compiled without the test.
protocol MirrorMode {
    /// Whether lines are mirrored.
    static var isOn: Bool { get }
}

/// No mirror pool (`--mirror` not given).
enum NotMirroring: MirrorMode {
    static var isOn: Bool { false }
}

/// A mirror pool gets copies of sampled lines.
enum Mirroring: MirrorMode {
    static var isOn: Bool { true }
}
