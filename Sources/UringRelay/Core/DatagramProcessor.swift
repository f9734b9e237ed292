
import RelayKernel
import Glibc

/// The per-datagram work of a worker, with no I/O: split into lines, check each, route it and
/// pack it into its backend's batch. Counters are plain fields; nothing here allocates.
///
/// `--validate`, `--hash-key`, the rewrite (`--metrics-prefix`, `--metrics-tags`) and the
/// mirror (`--mirror`) are fixed for a processor (a worker's, for its life). Each of their
/// combinations has its own copy of the line loop, specialised on a `LineValidation`, a
/// `KeyPolicy`, a `RewritePolicy` and a `MirrorMode` type: the modes are tested once per
/// datagram, never per line, and without a rewrite or a mirror the loop has no rewriting or
/// mirroring code at all.
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
    /// The line the loop without a rewrite has hashed and not yet packed. A field, not a local
    /// of the loop: the loop stores a line here and `pack` reads it from here, where a local was
    /// copied into a fresh argument for each call, from spill slots at a datagram's last line
    /// (issue 16: 30 instructions less per W1 datagram, W2 unchanged). `none` between
    /// datagrams: whether the loop has a line pending is `pending.isLine`, not a flag of its
    /// own (which lived in a stack slot, stored every line).
    private var pending = Pending.none
    /// `--metrics-prefix` and `--metrics-tags`.
    public let rewrite: LineRewrite
    /// The rewrite's bytes.
    private let rewriter: LineRewriter
    /// Whether a mirror pool gets copies (`--mirror`); tested once per datagram.
    public let isMirroring: Bool
    /// Where a mirrored line goes in the mirror pool (a one-backend stand-in without a mirror).
    public let mirrorRouter: Router
    /// Which keys are mirrored.
    public let mirrorSample: MirrorSample
    /// The defaults: no rewrite, no mirror, `--validate loose`, `--hash-key name`. Their line
    /// loop is chosen on this one test per datagram; the four settings it stands for are read
    /// only when it is false.
    private let isPlain: Bool

    /// A processor for `router`'s backends, counting into `counters`.
    ///
    /// - Precondition: `counters` counts as many backends as `router` routes to.
    public init(
        router: Router, packetBytes: Int, maxDatagramBytes: Int, counters: RelayCounters,
        validation: ValidationMode = .loose, hashKey: HashKeyMode = .name, rewrite: LineRewrite = LineRewrite(),
        mirror: MirrorPool? = nil
    ) throws(Errno) {
        precondition(counters.backendCount == router.backendCount, "counters for another pool")
        self.router = router
        self.validation = validation
        self.hashKey = hashKey
        self.rewrite = rewrite
        rewriter = LineRewriter(rewrite)
        isMirroring = mirror != nil
        mirrorRouter = mirror.map { Router(pool: $0.pool) } ?? Router(backendCount: 1)
        mirrorSample = mirror?.sample ?? MirrorSample(rate: 1)
        // A rewritten line is at most `growth` bytes longer (lines that would pass 65 507 are
        // dropped before they reach the assembler).
        routingKey = RoutingKey(maxLineBytes: maxDatagramBytes &+ rewrite.growth)
        assembler = try BatchAssembler(
            backendCount: router.backendCount, mirrorBackendCount: mirror?.count ?? 0, packetBytes: packetBytes,
            maxLineBytes: maxDatagramBytes &+ rewrite.growth,
            datagramBytes: rewrite.rewrittenDatagramBytes(maxDatagramBytes))
        isPlain = !rewriter.isActive && mirror == nil && validation == .loose && hashKey == .name
        self.counters = counters
        if let mirror { self.counters.countMirrorBackends(mirror.pool.identities) }
        primaries = PrimaryCache(backendCount: router.backendCount)
    }

    /// A processor for `router`'s backends, counting from zero.
    public init(
        router: Router, packetBytes: Int, maxDatagramBytes: Int, validation: ValidationMode = .loose,
        hashKey: HashKeyMode = .name, rewrite: LineRewrite = LineRewrite(), mirror: MirrorPool? = nil
    ) throws(Errno) {
        try self.init(
            router: router, packetBytes: packetBytes, maxDatagramBytes: maxDatagramBytes,
            counters: RelayCounters(backendCount: router.backendCount), validation: validation, hashKey: hashKey,
            rewrite: rewrite, mirror: mirror)
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
        // Only the defaults' loop is inlined here; every other is out of line.
        if isPlain {
            relay(datagram, now: now, LooseValidation.self, NameKey.self, NoRewrite.self, NotMirroring.self)
        } else {
            relayConfigured(datagram, now: now)
        }
    }

    /// `relay(datagram:now:)` with a rewrite, a mirror, `--validate strict` or `--hash-key
    /// name+tags`: the rewriting and the mirroring loops further out of line.
    @inline(never)
    private mutating func relayConfigured(_ datagram: RawSpan, now: UInt64) {
        if rewriter.isActive {
            relayRewriting(datagram, now: now)
        } else if isMirroring {
            relayMirroring(datagram, now: now)
        } else {
            relay(datagram, now: now, NoRewrite.self, NotMirroring.self)
        }
    }

    /// `relay(datagram:now:)` with `--metrics-prefix` or `--metrics-tags`, with or without a
    /// mirror pool (tested once per datagram, on the rewriting path only).
    @inline(never)
    private mutating func relayRewriting(_ datagram: RawSpan, now: UInt64) {
        if isMirroring {
            relayRewritingMirroring(datagram, now: now)
        } else {
            relay(datagram, now: now, Rewriting.self, NotMirroring.self)
        }
    }

    /// `relay(datagram:now:)` with a rewrite and a mirror pool: the mirror gets the line as
    /// rewritten, sampled and routed by its rewritten key.
    @inline(never)
    private mutating func relayRewritingMirroring(_ datagram: RawSpan, now: UInt64) {
        relay(datagram, now: now, Rewriting.self, Mirroring.self)
    }

    /// `relay(datagram:now:)` with a mirror pool.
    @inline(never)
    private mutating func relayMirroring(_ datagram: RawSpan, now: UInt64) {
        relay(datagram, now: now, NoRewrite.self, Mirroring.self)
    }

    /// `relay(datagram:now:)` for one rewrite policy and one mirror mode: the line loops are
    /// specialised on them too, so a relay with neither pays nothing for them per line.
    @inline(__always)
    private mutating func relay<Rewrite: RewritePolicy, Mirror: MirrorMode>(
        _ datagram: RawSpan, now: UInt64, _: Rewrite.Type, _: Mirror.Type
    ) {
        switch (validation, hashKey) {
        case (.loose, .name): relay(datagram, now: now, LooseValidation.self, NameKey.self, Rewrite.self, Mirror.self)
        case (.strict, .name): relay(datagram, now: now, StrictValidation.self, NameKey.self, Rewrite.self, Mirror.self)
        case (.loose, .nameAndTags): relay(datagram, now: now, LooseValidation.self, NameAndTagsKey.self, Rewrite.self, Mirror.self)
        case (.strict, .nameAndTags): relay(datagram, now: now, StrictValidation.self, NameAndTagsKey.self, Rewrite.self, Mirror.self)
        }
    }

    /// A line scanned, checked and hashed, waiting to be routed and packed.
    private struct Pending {
        /// `line` and `key` held in 32 bits (the datagram's length is checked to fit, once per
        /// datagram): fewer words to store and pass a line.
        private var lineStart, lineEnd, keyStart, keyEnd: Int32
        var line: Range<Int> { Range(uncheckedBounds: (Int(lineStart), Int(lineEnd))) }
        var key: Range<Int> { Range(uncheckedBounds: (Int(keyStart), Int(keyEnd))) }
        /// Whether the routing key is written out (`name+tags`, or a prefixed name) rather
        /// than `key`'s bytes.
        var isComposite: Bool
        var probe: PrimaryCache.Probe

        /// No line: what the loop's pending line is before the first.
        static var none: Pending { Pending(line: 0..<0, key: 0..<0, isComposite: false, probe: .none) }

        /// Whether this is a line, not `none`: a line ends past its start, so above 0.
        var isLine: Bool { lineEnd != 0 }

        /// Makes this `none` again (for the loop's test, `isLine`: the other fields are left).
        mutating func clear() { lineEnd = 0 }

        /// A line of a datagram shorter than `Int32.max` bytes.
        init(line: Range<Int>, key: Range<Int>, isComposite: Bool, probe: PrimaryCache.Probe) {
            lineStart = Int32(truncatingIfNeeded: line.lowerBound)
            lineEnd = Int32(truncatingIfNeeded: line.upperBound)
            keyStart = Int32(truncatingIfNeeded: key.lowerBound)
            keyEnd = Int32(truncatingIfNeeded: key.upperBound)
            self.isComposite = isComposite
            self.probe = probe
        }
    }

    /// The line loop for one `--validate` mode, one `--hash-key` mode, one rewrite policy and
    /// one mirror mode.
    ///
    /// Software-pipelined by one line: a line's cache set is read right after its key is
    /// hashed, and the line is routed and packed only after the next line is hashed, so that
    /// read overlaps the next hash instead of stalling. Lines are packed in datagram order.
    @inline(__always)
    private mutating func relay<Validation: LineValidation, Key: KeyPolicy, Rewrite: RewritePolicy, Mirror: MirrorMode>(
        _ datagram: RawSpan, now: UInt64, _: Validation.Type, _: Key.Type, _: Rewrite.Type, _: Mirror.Type
    ) {
        // Lines are held in `Pending`'s 32-bit offsets.
        precondition(datagram.byteCount <= Int(Int32.max), "datagram too long")
        var offset = 0
        // Under `Rewriting` only: the line hashed and not yet packed, and whether there is one
        // (the loop without a rewrite keeps it in `self.pending`). Not an optional:
        // `packRewritten` then borrows the variable itself, where the unwrapped copy of an
        // optional was copied again a line to pass it.
        var pending = Pending.none
        var hasPending = false
        // How the pending line is rewritten (under `Rewriting` only).
        var pendingEdit = LineRewriter.Edit.none
        // The name's cache hash, where the scan computed it (`probesByNameHash` only).
        var scannedHash: UInt64?
        let seeds = Self.probesByNameHash(Key.self, Mirror.self) && !Rewrite.isActive ? primaries.nameSeeds : nil
        // A line left pending by an earlier datagram would be packed from this one's bytes.
        assert(!self.pending.isLine, "a line left pending across datagrams")
        while let scanned = LineScanner.next(in: datagram, from: &offset, hashingNameWith: seeds, nameHash: &scannedHash) {
            switch scanned {
            case .valid(let start, let end, let key):
                counters[.linesReceived] &+= 1
                // A `.valid` line is never empty (`start < end`): no check again here.
                let line = Range(uncheckedBounds: (start, end))
                if let reason = Validation.check(datagram, line: line, key: key) {
                    counters[.dropped(reason)] &+= 1
                    continue
                }
                if Rewrite.isActive {
                    let edit = rewriter.edit(datagram, line: line, key: key)
                    // Never cut: a line the rewrite takes past what UDP carries is dropped whole.
                    if edit.length > BatchAssembler.largestDatagramBytes {
                        counters[.dropped(.tooLongRewritten)] &+= 1
                        continue
                    }
                    let seed = edit.isPrefixed ? rewriter.prefixSeed : FNV1a.offsetBasis
                    let (hash, isComposite) = Key.hash(datagram, line: line, key: key, seed: seed, scratch: &routingKey)
                    let probe = primaries.probe(hash)
                    if hasPending {
                        if Mirror.isOn { mirrorRewrittenIfSampled(pending, pendingEdit, in: datagram, now: now, Key.self) }
                        packRewritten(pending, pendingEdit, in: datagram, now: now, Key.self)
                    }
                    pending = Pending(line: line, key: key, isComposite: isComposite || edit.isPrefixed, probe: probe)
                    hasPending = true
                    pendingEdit = edit
                } else {
                    let hash: UInt64
                    let isComposite: Bool
                    if Self.probesByNameHash(Key.self, Mirror.self) {
                        // The name's FNV-1a 64 is computed only if the cache misses (`routeUncached`).
                        hash = scannedHash ?? Self.nameHash(of: datagram.extracting(key), in: primaries)
                        isComposite = false
                    } else {
                        (hash, isComposite) = Key.hash(
                            datagram, line: line, key: key, seed: FNV1a.offsetBasis, scratch: &routingKey)
                    }
                    // The line before is packed first and this one probed after: its set is still read
                    // ahead of its pack (in the next line's turn), and fewer of its values live across
                    // the pack (its hash, not the set's two entries).
                    if self.pending.isLine {
                        if Mirror.isOn { mirrorIfSampled(in: datagram, now: now) }
                        pack(
                            in: datagram, now: now, probedByNameHash: Self.probesByNameHash(Key.self, Mirror.self),
                            mayBeComposite: Key.includesTags)
                    }
                    let probe = primaries.probe(hash)
                    self.pending = Pending(line: line, key: key, isComposite: isComposite, probe: probe)
                }
            case .empty:
                counters[.emptyLines] &+= 1
            case .malformed(let reason):
                counters[.linesReceived] &+= 1
                counters[.dropped(reason)] &+= 1
            }
        }
        if Rewrite.isActive {
            if hasPending {
                if Mirror.isOn { mirrorRewrittenIfSampled(pending, pendingEdit, in: datagram, now: now, Key.self) }
                packRewritten(pending, pendingEdit, in: datagram, now: now, Key.self)
            }
        } else if self.pending.isLine {
            if Mirror.isOn { mirrorIfSampled(in: datagram, now: now) }
            pack(
                in: datagram, now: now, probedByNameHash: Self.probesByNameHash(Key.self, Mirror.self),
                mayBeComposite: Key.includesTags)
            self.pending.clear()
        }
    }

    /// The cache's `nameHash` of a name the line scan did not hash (a line ending fewer than 16
    /// bytes before the datagram's end, a service check's or an event's key). Out of line: the
    /// loop then carries no copy of the hash's code and registers.
    @inline(never)
    private static func nameHash(of name: RawSpan, in cache: borrowing PrimaryCache) -> UInt64 {
        cache.nameHash(name)
    }

    /// Whether the line loop without a rewrite probes the cache by the name's `nameHash` rather
    /// than its routing key's FNV-1a 64: under `--hash-key name` (the key is the name's bytes)
    /// without a mirror (which samples by the FNV-1a). Fixed for a processor, as its cache's
    /// index must be (`PrimaryCache`).
    @inline(__always)
    private static func probesByNameHash<Key: KeyPolicy, Mirror: MirrorMode>(_: Key.Type, _: Mirror.Type) -> Bool {
        !Key.includesTags && !Mirror.isOn
    }

    /// Routes the pending line of `datagram` (`self.pending`) by its probed hash (and, on a
    /// ring's cache miss or rehash, the md5 of its key) and packs it into its backend's batch.
    ///
    /// The common line (its primary cached, every backend up, room in the open batch) is packed
    /// here, inlined in the line loop; any other goes through `packRouted`, out of line, whose
    /// registers and stack the common line then does not pay for.
    ///
    /// - Parameters:
    ///   - probedByNameHash: whether the pending line's probe is of its name's `nameHash` (then
    ///     its FNV-1a 64 is computed here if it must be routed).
    ///   - mayBeComposite: whether the loop's key policy can write a key out (`name+tags`): a
    ///     constant of the loop, so the loop whose keys never are does not read the flag.
    @inline(__always)
    private mutating func pack(in datagram: RawSpan, now: UInt64, probedByNameHash: Bool, mayBeComposite: Bool) {
        if !(mayBeComposite && pending.isComposite), router.downCount == 0,
           let primary = primaries.cachedPrimary(for: pending.probe),
           // The pending line was scanned from this datagram: within it, no check again.
           assembler.appendToOpenBatch(pending.line, scannedFrom: datagram, of: primary) {
            counters[.linesForwarded] &+= 1
            return
        }
        packRouted(in: datagram, now: now, probedByNameHash: probedByNameHash)
    }

    /// `pack` of a line whose primary is not cached, whose key is written out, while a backend
    /// is down, or that opens a batch.
    @inline(never)
    private mutating func packRouted(in datagram: RawSpan, now: UInt64, probedByNameHash: Bool) {
        // The pending line's parts are read where they are used, not copied out whole first.
        let line = datagram.extracting(pending.line)
        let decision: Router.Decision
        if pending.isComposite && router.hashMode != .jump {
            // A ring places the key by its md5: write the name+tags key out. (Under `jump`
            // the hash is all that routes it.)
            decision = Self.routeWritten(pending, in: datagram, scratch: &routingKey, cache: &primaries, router: router)
        } else if let primary = primaries.cachedPrimary(for: pending.probe), router.downCount == 0 {
            // Cached with every backend up: here because the line opens a batch (or a composite
            // key under `jump`). Read from the fields where they lie: the router is copied out
            // only by `routeUncached`, which calls its methods.
            decision = .send(primary)
        } else {
            decision = routeUncached(in: datagram, probedByNameHash: probedByNameHash)
        }
        guard let backend = backend(for: decision) else { return }
        if assembler.append(line, to: backend, now: now) {
            counters[.linesForwarded] &+= 1
        } else {
            counters[.linesDroppedNoSendBuffer] &+= 1
        }
    }

    /// `pack`'s routing of the pending line when its primary is not cached or a backend is
    /// down. Out of line: rare, and it copies the router.
    @inline(never)
    private mutating func routeUncached(in datagram: RawSpan, probedByNameHash: Bool) -> Router.Decision {
        let key = datagram.extracting(pending.key)
        let hash = probedByNameHash ? RoutingKey.hash(continuing: FNV1a.offsetBasis, key) : pending.probe.hash
        let primary = primaries.primary(for: pending.probe, key: key, hash: hash, router: router)
        return router.route(key: key, hash: hash, primary: primary)
    }

    /// `pack` for a line rewritten as `edit` says: routed by its rewritten key (on a ring, the
    /// prefixed name, with its tags under `name+tags`, written out), copied once, in pieces,
    /// straight into the packet. Apart from `pack`, so that the line path without a rewrite
    /// carries none of this.
    @inline(__always)
    private mutating func packRewritten<Key: KeyPolicy>(
        _ pending: Pending, _ edit: LineRewriter.Edit, in datagram: RawSpan, now: UInt64, _: Key.Type
    ) {
        let decision: Router.Decision
        if pending.isComposite && router.hashMode != .jump {
            decision = Self.routeRewritten(
                pending, in: datagram, isPrefixed: edit.isPrefixed, rewriter: rewriter, withTags: Key.includesTags,
                scratch: &routingKey, cache: &primaries, router: router)
        } else {
            let key = datagram.extracting(pending.key)
            let primary = primaries.primary(for: pending.probe, key: key, router: router)
            decision = router.route(key: key, hash: pending.probe.hash, primary: primary)
        }
        guard let backend = backend(for: decision) else { return }
        if Self.appendRewritten(pending, edit, of: datagram, to: backend, now: now, rewriter: rewriter, assembler: &assembler) {
            counters[.linesForwarded] &+= 1
        } else {
            counters[.linesDroppedNoSendBuffer] &+= 1
        }
    }

    /// The backend a routing decision sends a line to, or `nil` when it is dropped (counted here).
    @inline(__always)
    private mutating func backend(for decision: Router.Decision) -> Int? {
        switch decision {
        case .send(let primary):
            // Every backend is down under rehash or drop: sent to its primary as if healthy.
            if router.downCount != 0 && router.isFailingOpen { counters[.linesFailOpen] &+= 1 }
            return primary
        case .hold(let primary):
            // Batched as usual; the worker holds the packet instead of sending it.
            return primary
        case .rehash(let primary, let other):
            counters[.linesRehashedAway, backend: primary] &+= 1
            return other
        case .drop(let primary):
            counters[.linesDroppedBackendDown, backend: primary] &+= 1
            return nil
        }
    }

    /// Under `Mirroring`, before the pending line (`self.pending`) is packed for the primary
    /// pool: packs a copy for the mirror pool when its key is sampled, whatever becomes of the
    /// line in the primary pool. Apart from `pack`, which stays as it is without a mirror (its
    /// inlining unchanged).
    @inline(__always)
    private mutating func mirrorIfSampled(in datagram: RawSpan, now: UInt64) {
        let pending = self.pending
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
            counters[MirrorBackendCounter.linesDroppedNoSendBuffer, mirror: backend] &+= 1
        }
    }

    /// Under `Rewriting` and `Mirroring`, before the rewritten line is packed for the primary
    /// pool: packs the same rewritten bytes for the mirror when its rewritten key is sampled
    /// (the hash the loop made of it: the prefixed name, with its tags under `name+tags`),
    /// routed by that key too. A line the rewrite makes too long never gets here: it is
    /// counted once, in `lines_dropped.too_long_rewritten`, and neither sent nor mirrored.
    @inline(__always)
    private mutating func mirrorRewrittenIfSampled<Key: KeyPolicy>(
        _ pending: Pending, _ edit: LineRewriter.Edit, in datagram: RawSpan, now: UInt64, _: Key.Type
    ) {
        guard mirrorSample.contains(hash: pending.probe.hash) else { return }
        let mirror: Int
        if mirrorRouter.hashMode == .jump {
            mirror = JumpHash.bucket(for: pending.probe.hash, buckets: mirrorRouter.backendCount)
        } else if pending.isComposite {
            mirror = Self.mirrorBackendRewritten(
                pending, in: datagram, isPrefixed: edit.isPrefixed, rewriter: rewriter, withTags: Key.includesTags,
                scratch: &routingKey, router: mirrorRouter)
        } else {
            mirror = mirrorRouter.primary(key: datagram.extracting(pending.key), hash: pending.probe.hash)
        }
        // Mirror backend m is batched at `backendCount + m`, from the mirror's own slots.
        let target = assembler.backendCount &+ mirror
        if Self.appendRewritten(pending, edit, of: datagram, to: target, now: now, rewriter: rewriter, assembler: &assembler) {
            counters[.mirrorLines] &+= 1
        } else {
            counters[.mirrorLinesDroppedNoSendBuffer] &+= 1
            counters[MirrorBackendCounter.linesDroppedNoSendBuffer, mirror: mirror] &+= 1
        }
    }

    /// The mirror backend of a rewritten line by its written-out key (for a ring's md5): the
    /// prefix if the line is prefixed, the name, and its tags if `withTags`.
    @inline(never)
    private static func mirrorBackendRewritten(
        _ pending: Pending, in datagram: RawSpan, isPrefixed: Bool, rewriter: borrowing LineRewriter, withTags: Bool,
        scratch: inout RoutingKey, router: borrowing Router
    ) -> Int {
        let prefix = rewriter.prefix.span.bytes
        scratch.write(
            datagram, line: pending.line, key: pending.key, prefix: prefix.extracting(0..<(isPrefixed ? prefix.byteCount : 0)),
            withTags: withTags)
        return router.primary(key: scratch.written.span.bytes, hash: pending.probe.hash)
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

    /// `routeWritten` for a rewritten line: its key written out with the prefix (if the line
    /// is prefixed) and its tags (if `withTags`).
    @inline(__always)
    private static func routeRewritten(
        _ pending: Pending, in datagram: RawSpan, isPrefixed: Bool, rewriter: borrowing LineRewriter, withTags: Bool,
        scratch: inout RoutingKey, cache: inout PrimaryCache, router: borrowing Router
    ) -> Router.Decision {
        let prefix = rewriter.prefix.span.bytes
        scratch.write(
            datagram, line: pending.line, key: pending.key, prefix: prefix.extracting(0..<(isPrefixed ? prefix.byteCount : 0)),
            withTags: withTags)
        let key = scratch.written.span.bytes
        let primary = cache.primary(for: pending.probe, key: key, router: router)
        return router.route(key: key, hash: pending.probe.hash, primary: primary)
    }

    /// Packs a rewritten line, copied once, in pieces, straight into the packet (static, on
    /// its parts, as `routeWritten`).
    @inline(__always)
    private static func appendRewritten(
        _ pending: Pending, _ edit: LineRewriter.Edit, of datagram: RawSpan, to backend: Int, now: UInt64,
        rewriter: borrowing LineRewriter, assembler: inout BatchAssembler
    ) -> Bool {
        let prefix = rewriter.prefix.span.bytes
        return assembler.append(
            prefix: prefix.extracting(0..<(edit.isPrefixed ? prefix.byteCount : 0)),
            head: datagram.extracting(pending.line.lowerBound..<edit.insertAt),
            insert: rewriter.tagPieces.span.bytes.extracting(edit.insert),
            tail: datagram.extracting(edit.insertAt..<pending.line.upperBound), to: backend, now: now)
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
