import RelayKernel

/// One worker's held packets for every backend of its pool (`--on-backend-down hold`): a FIFO
/// queue per backend in chunks taken from the relay-wide `HoldBudget`, and a token bucket per
/// backend that paces the replay once the backend is back.
///
/// A queue is a chain of chunks; each packet is an 8-byte-aligned entry that may run on into the
/// next chunk (a header never does: chunk sizes and entry starts are multiples of 8):
/// ```
///  chunk 3                          chunk 7                   chunk 5
/// [.. free ..|hdr|packet A|hdr|pack] → [et B ..|hdr|packet C|] → [hdr|packet D|.. room ..]
///            ^ head (oldest)                                              ^ tail
///  hdr = | length: UInt32 | lines: UInt32 |
/// ```
///
/// Memory: a chunk is mapped (`MappedChunks`, no zero-fill up front) only when a queue's tail
/// has no room, after reserving it from the budget with one atomic operation; it is unmapped and
/// returned as soon as the head has moved past it, so a drained queue holds nothing and its
/// memory leaves the process. When the budget is exhausted, room is made by dropping the oldest
/// packets of this worker's largest queue (this backend's own if it is among the largest), so a
/// backend that has been down for long cannot starve one that just failed; a worker above its
/// fair share gives chunks back to workers below theirs (see `HoldBudget`), as it holds a packet
/// and at every turn of its worker (`repayClaim`).
///
/// Order: while a backend's queue is not empty (`isHolding`), its live packets must be held
/// behind it, not sent, so nothing newer overtakes what is held. Replay (`replayNext`) is paced
/// at `replayBytesPerSecond` per worker with a burst of `burstBytes`.
///
/// Allocation: none per packet. The chunk id tables grow (heap) only when more chunks are held at
/// once than ever before; each new chunk costs one `mmap`, each drained one a `munmap`.
public struct HoldStore: ~Copyable {
    /// One backend's queue and pacing.
    private struct Queue {
        var headChunk = -1
        var headOffset = 0
        var tailChunk = -1
        var tailOffset = 0
        /// The chunk where the newest entry starts.
        var newestChunk = -1
        var chunks = 0
        var packets = 0
        var lines = 0
        var bytes = 0
        /// Replay credit in byte-nanoseconds (bytes × 10⁹), so that sub-byte credit is not lost
        /// between close turns; negative after a packet larger than the burst.
        var credit: Int
        var creditedAt: UInt64 = 0
    }

    private var queues: [Queue]
    /// The next chunk of a queue's chain, by chunk id; -1 ends a chain.
    private var nextChunk: [Int] = []
    private var memory: MappedChunks
    /// Chunks reserved and mapped for the packet being held, not yet in a chain; empty between calls.
    private var spares: [Int] = []
    private let budget: HoldBudget
    /// Bytes per chunk (the budget's).
    public let chunkBytes: Int
    /// This worker's replay rate in bytes per second, per recovering backend.
    public let replayBytesPerSecond: Int
    /// Bytes a recovering backend may receive at once before the rate applies.
    public let burstBytes: Int
    /// Packets held for every backend.
    public private(set) var heldPackets = 0
    /// Lines held for every backend.
    public private(set) var heldLines = 0

    private static let headerBytes = 8
    private static let nanosecondsPerSecond = 1_000_000_000
    /// Packets a recovering backend may receive back to back: enough to fill a loop turn's
    /// sends without waking for each packet, few enough for a 208 KiB socket buffer.
    public static let burstPackets = 4

    /// An empty store for `backendCount` backends.
    ///
    /// - Parameters:
    ///   - budget: the relay-wide budget; the replay rate is its rate divided among its workers.
    ///   - packetBytes: `--packet-len`; the burst is `burstPackets` of them.
    public init(backendCount: Int, budget: HoldBudget, packetBytes: Int) {
        precondition(backendCount >= 0 && packetBytes > 0)
        self.budget = budget
        chunkBytes = budget.chunkBytes
        memory = MappedChunks(chunkBytes: budget.chunkBytes)
        replayBytesPerSecond = budget.replayBytesPerSecondPerWorker
        burstBytes = Self.burstPackets * packetBytes
        queues = Array(repeating: Queue(credit: burstBytes * Self.nanosecondsPerSecond), count: backendCount)
        // Room for the chunks of the largest entry (a 64 KiB line) on the smallest chunks, so
        // holding a packet does not grow it.
        spares.reserveCapacity(65_544 / MappedChunks.pageBytes + 2)
    }

    deinit {
        for _ in 0..<memory.mappedCount { budget.returnChunk() }
    }

    // MARK: Queries

    /// How many backends this store covers.
    public var backendCount: Int { queues.count }

    /// Whether `backend` has packets held. While it does, its live packets must be held behind
    /// them (`hold`), not sent: nothing newer may overtake what is held.
    public func isHolding(_ backend: Int) -> Bool { queues[backend].packets > 0 }

    /// Lines held for `backend`.
    public func heldLines(of backend: Int) -> Int { queues[backend].lines }

    /// Packets held for `backend`.
    public func heldPackets(of backend: Int) -> Int { queues[backend].packets }

    /// Packet bytes held for `backend` (without headers and unused chunk space).
    public func heldBytes(of backend: Int) -> Int { queues[backend].bytes }

    /// Bytes of chunks this store holds (what it reserved from the budget and has mapped).
    public var bytesInUse: Int { memory.mappedCount * chunkBytes }

    // MARK: Holding

    /// What `hold` did.
    public struct Outcome: Equatable, Sendable {
        /// Whether the packet was stored. When not, its own lines are lost: it can never fit, or
        /// every chunk of the budget is held by other workers.
        public var stored: Bool
        /// The backend whose oldest packets were dropped to make room (possibly the packet's own),
        /// or -1.
        public var evictedBackend: Int
        /// Lines of those dropped packets.
        public var evictedLines: Int
    }

    /// Appends a packet at the tail of `backend`'s queue.
    ///
    /// Takes at most the chunks the packet spans (one for a packet up to a chunk) from the budget;
    /// when the budget is exhausted, drops the oldest packets of this worker's largest queue.
    ///
    /// - Returns: whether it was stored, and which backend lost how many lines to make room.
    public mutating func hold(_ packet: RawSpan, lines: Int, backend: Int) -> Outcome {
        let size = packet.byteCount
        let needed = Self.entryBytes(size)
        var outcome = Outcome(stored: true, evictedBackend: -1, evictedLines: 0)
        guard needed <= budget.chunkLimit * chunkBytes, size <= Int(UInt32.max), lines <= Int(UInt32.max) else {
            outcome.stored = false
            return outcome
        }
        while needed > room(of: backend) + spares.count * chunkBytes {
            if let chunk = takeChunkFromBudget(belowShare: memory.mappedCount < budget.fairShareChunks) {
                spares.append(chunk)
                continue
            }
            if memory.mappedCount < budget.fairShareChunks { budget.claim() }
            if outcome.evictedBackend < 0 {
                // One victim per call keeps the outcome simple; it is taken only if emptying it
                // would make room, so nothing is dropped for a packet that is refused anyway.
                guard let victim = largestQueue(preferring: backend),
                      needed <= (spares.count + queues[victim].chunks) * chunkBytes + (victim == backend ? 0 : room(of: backend))
                else {
                    releaseSpares()
                    outcome.stored = false
                    return outcome
                }
                outcome.evictedBackend = victim
            }
            guard queues[outcome.evictedBackend].packets > 0 else {
                // Cannot happen (the victim was checked to cover the packet); never loop on it.
                releaseSpares()
                outcome.stored = false
                return outcome
            }
            outcome.evictedLines += dropHeadChunk(of: outcome.evictedBackend)
        }
        append(packet, lines: lines, to: backend)
        releaseSpares()
        if budget.hasClaims && memory.mappedCount > budget.fairShareChunks { giveBackChunk(&outcome, holding: backend) }
        assert(verifyInvariants())
        return outcome
    }

    /// Satisfies one claim of a store below its share: drops this store's oldest chunk of packets
    /// (from this call's victim, or the largest queue) and returns the chunk to the budget.
    private mutating func giveBackChunk(_ outcome: inout Outcome, holding backend: Int) {
        // Never the packet just stored: its queue gives back only chunks before the one it starts in.
        let backendEligible = queues[backend].headChunk != queues[backend].newestChunk
        let victim = outcome.evictedBackend >= 0
            ? outcome.evictedBackend
            : largestQueue(preferring: backend, excluding: backendEligible ? -1 : backend)
        guard let victim, queues[victim].packets > 0, victim != backend || backendEligible, budget.takeClaim() else { return }
        outcome.evictedBackend = victim
        outcome.evictedLines += dropHeadChunk(of: victim)
        // One chunk per claim is set aside; more (a long packet spanned several) go back as usual.
        if let chunk = spares.popLast() {
            memory.unmap(chunk)
            budget.setAsideChunk()
        }
        releaseSpares()
    }

    /// Satisfies one claim of a store below its share, if there is one and this store is above
    /// its own: drops the oldest chunk of packets of its largest queue and sets the chunk aside
    /// for the claimant. What `hold` does for each packet it stores, for a worker that holds
    /// nothing new (its client stopped sending, or its backend's replay waits): the worker calls
    /// it every turn, so the oldest packets of the relay go first, not the claimant's newest.
    ///
    /// One atomic load when nothing is claimed.
    /// - Returns: the backend whose packets were dropped and their lines; nil when nothing was
    ///   given back.
    public mutating func repayClaim() -> (backend: Int, lines: Int)? {
        guard heldPackets > 0, budget.hasClaims, memory.mappedCount > budget.fairShareChunks,
              let victim = largestQueue(preferring: 0), budget.takeClaim() else { return nil }
        let lines = dropHeadChunk(of: victim)
        // One chunk per claim is set aside; more (a long packet spanned several) go back as usual.
        if let chunk = spares.popLast() {
            memory.unmap(chunk)
            budget.setAsideChunk()
        }
        releaseSpares()
        assert(verifyInvariants())
        return (victim, lines)
    }

    /// Room left in the tail chunk of `backend`'s queue.
    private func room(of backend: Int) -> Int {
        queues[backend].tailChunk < 0 ? 0 : chunkBytes - queues[backend].tailOffset
    }

    /// Bytes an entry takes: the header and the packet, rounded up to 8.
    private static func entryBytes(_ size: Int) -> Int { headerBytes + ((size + 7) & ~7) }

    /// A chunk reserved from the budget and mapped, or nil when the budget is exhausted (or the
    /// system refused the mapping, which is handled alike).
    private mutating func takeChunkFromBudget(belowShare: Bool) -> Int? {
        guard budget.reserveChunk(belowShare: belowShare) else { return nil }
        do throws(Errno) {
            let chunk = try memory.map()
            while nextChunk.count <= chunk { nextChunk.append(-1) }
            nextChunk[chunk] = -1
            return chunk
        } catch {
            budget.returnChunk()
            return nil
        }
    }

    /// The queue with the most chunks, `preferred` among equals; nil when none holds a chunk.
    private func largestQueue(preferring preferred: Int, excluding excluded: Int = -1) -> Int? {
        var best = queues[preferred].chunks > 0 && preferred != excluded ? preferred : -1
        var most = best < 0 ? 0 : queues[preferred].chunks
        for backend in queues.indices where queues[backend].chunks > most && backend != excluded {
            best = backend
            most = queues[backend].chunks
        }
        return best < 0 ? nil : best
    }

    /// Drops the oldest packets of `backend` until its head chunk is freed (into `spares`).
    ///
    /// - Returns: the lines dropped.
    private mutating func dropHeadChunk(of backend: Int) -> Int {
        let chunk = queues[backend].headChunk
        var dropped = 0
        while queues[backend].packets > 0 && queues[backend].headChunk == chunk {
            let (length, lines) = header(of: backend)
            removeHead(of: backend, length: length, lines: lines, keepingChunks: true)
            dropped += lines
        }
        return dropped
    }

    /// Writes the entry at the tail, linking spare chunks as it goes.
    ///
    /// - Precondition: the tail's room and the spares cover `entryBytes(packet.byteCount)`.
    private mutating func append(_ packet: RawSpan, lines: Int, to backend: Int) {
        let size = packet.byteCount
        extendTailIfFull(of: backend)
        let headerChunk = queues[backend].tailChunk
        let headerOffset = queues[backend].tailOffset
        queues[backend].newestChunk = headerChunk
        memory.store(UInt32(size), into: headerChunk, at: headerOffset)
        memory.store(UInt32(lines), into: headerChunk, at: headerOffset + 4)
        queues[backend].tailOffset += Self.headerBytes
        var written = 0
        while written < size {
            extendTailIfFull(of: backend)
            let count = min(size - written, chunkBytes - queues[backend].tailOffset)
            memory.copy(packet.extracting(written..<written + count), into: queues[backend].tailChunk, at: queues[backend].tailOffset)
            queues[backend].tailOffset += count
            written += count
        }
        // Chunk boundaries are multiples of 8, so the padding never crosses one.
        queues[backend].tailOffset = (queues[backend].tailOffset + 7) & ~7
        queues[backend].packets += 1
        queues[backend].lines += lines
        queues[backend].bytes += size
        heldPackets += 1
        heldLines += lines
    }

    /// Links a spare chunk after the tail when the tail is full or the queue has none.
    private mutating func extendTailIfFull(of backend: Int) {
        guard queues[backend].tailChunk < 0 || queues[backend].tailOffset == chunkBytes else { return }
        guard let chunk = spares.popLast() else { preconditionFailure("hold store: no spare chunk for an entry that was sized to fit") }
        nextChunk[chunk] = -1
        if queues[backend].tailChunk < 0 {
            queues[backend].headChunk = chunk
            queues[backend].headOffset = 0
        } else {
            nextChunk[queues[backend].tailChunk] = chunk
        }
        queues[backend].tailChunk = chunk
        queues[backend].tailOffset = 0
        queues[backend].chunks += 1
    }

    /// Unmaps the spares left over and returns them to the budget.
    private mutating func releaseSpares() {
        while let chunk = spares.popLast() { freeChunk(chunk) }
    }

    private mutating func freeChunk(_ chunk: Int) {
        memory.unmap(chunk)
        budget.returnChunk()
    }

    // MARK: Replay

    /// The byte length of `backend`'s oldest packet if pacing lets it go at `now`; nil when
    /// nothing is held or when it must wait. Lets a caller take a send slot before `replayNext`.
    public func replayableLength(of backend: Int, now: UInt64) -> Int? {
        guard queues[backend].packets > 0 else { return nil }
        let length = header(of: backend).length
        return credit(of: backend, at: now) >= cost(of: length) ? length : nil
    }

    /// Removes `backend`'s oldest packet, if pacing lets it go at `now`, and lends its bytes to
    /// `body` (in one piece per chunk it spans, in order).
    ///
    /// Pacing: a token bucket of `burstBytes` refilled at `replayBytesPerSecond`. A packet goes
    /// when the bucket holds its length (or is full, for a packet larger than the burst, which
    /// then leaves it in debt), so a recovering backend receives at most
    /// `burstBytes + replayBytesPerSecond × elapsed` (plus one oversized packet).
    ///
    /// - Returns: the packet's line count; nil when nothing is held or pacing says wait.
    public mutating func replayNext(backend: Int, now: UInt64, _ body: (RawSpan) -> Void) -> Int? {
        guard queues[backend].packets > 0 else { return nil }
        let (length, lines) = header(of: backend)
        let available = credit(of: backend, at: now)
        guard available >= cost(of: length) else { return nil }
        queues[backend].credit = available - length * Self.nanosecondsPerSecond
        queues[backend].creditedAt = now
        var chunk = queues[backend].headChunk
        var offset = queues[backend].headOffset + Self.headerBytes
        var remaining = length
        while remaining > 0 {
            if offset == chunkBytes {
                chunk = nextChunk[chunk]
                offset = 0
            }
            let count = min(remaining, chunkBytes - offset)
            memory.withBytes(in: chunk, at: offset, count: count, body)
            offset += count
            remaining -= count
        }
        removeHead(of: backend, length: length, lines: lines, keepingChunks: false)
        assert(verifyInvariants())
        return lines
    }

    /// When pacing next lets a packet go, over the backends `isReplaying` accepts (those that are
    /// up); `now` if one may go now, nil when none of them holds anything. An idle worker waits
    /// no longer than this.
    public func nextReplayTime(now: UInt64, isReplaying: (Int) -> Bool) -> UInt64? {
        guard heldPackets > 0 else { return nil }
        var earliest: UInt64?
        for backend in queues.indices where queues[backend].packets > 0 && isReplaying(backend) {
            let missing = cost(of: header(of: backend).length) - credit(of: backend, at: now)
            if missing <= 0 { return now }
            let wait = UInt64((missing + replayBytesPerSecond - 1) / replayBytesPerSecond)
            earliest = min(earliest ?? .max, now &+ wait)
        }
        return earliest
    }

    /// The credit a packet of `length` bytes needs: its length, or a full bucket if it is larger.
    private func cost(of length: Int) -> Int { min(length, burstBytes) * Self.nanosecondsPerSecond }

    /// The credit of `backend` at `now`: what it had plus the rate since, up to a full bucket.
    private func credit(of backend: Int, at now: UInt64) -> Int {
        let full = burstBytes * Self.nanosecondsPerSecond
        let queue = queues[backend]
        guard queue.credit < full else { return full }
        // Capped so the product cannot overflow: past this much time the bucket is full anyway.
        let fillTime = UInt64((full - queue.credit) / replayBytesPerSecond + 1)
        let elapsed = now > queue.creditedAt ? min(now - queue.creditedAt, fillTime) : 0
        return min(full, queue.credit + Int(elapsed) * replayBytesPerSecond)
    }

    // MARK: Removal

    /// Drops everything held for `backend` (a removed backend) and frees its chunks.
    ///
    /// - Returns: the lines dropped.
    public mutating func discard(backend: Int) -> Int {
        var dropped = 0
        while queues[backend].packets > 0 {
            let (length, lines) = header(of: backend)
            removeHead(of: backend, length: length, lines: lines, keepingChunks: false)
            dropped += lines
        }
        queues[backend].credit = burstBytes * Self.nanosecondsPerSecond
        assert(verifyInvariants())
        return dropped
    }

    /// Re-indexes the queues after a backend-pool change.
    ///
    /// - Parameters:
    ///   - newIndex: entry `i` is the new index of old backend `i`, or nil if it was removed.
    ///   - newCount: the backends of the new pool; those no old backend maps to start empty.
    /// - Returns: the lines dropped with the removed backends.
    /// - Precondition: one entry per old backend, new indices distinct and below `newCount`.
    public mutating func remap(_ newIndex: [Int?], newCount: Int) -> Int {
        precondition(newIndex.count == queues.count, "remap needs one entry per backend")
        var dropped = 0
        var remapped = Array(repeating: Queue(credit: burstBytes * Self.nanosecondsPerSecond), count: newCount)
        var taken = Array(repeating: false, count: newCount)
        for old in queues.indices {
            guard let new = newIndex[old] else {
                dropped += discard(backend: old)
                continue
            }
            precondition(new >= 0 && new < newCount && !taken[new], "remap: new index \(new) out of range or taken twice")
            taken[new] = true
            remapped[new] = queues[old]
        }
        queues = remapped
        assert(verifyInvariants())
        return dropped
    }

    /// The oldest entry's header.
    private func header(of backend: Int) -> (length: Int, lines: Int) {
        let chunk = queues[backend].headChunk
        let offset = queues[backend].headOffset
        return (Int(memory.load(from: chunk, at: offset)), Int(memory.load(from: chunk, at: offset + 4)))
    }

    /// Moves the head past the oldest entry; every chunk it leaves is freed (into `spares` when
    /// `keepingChunks`, to make room; otherwise unmapped and returned to the budget).
    private mutating func removeHead(of backend: Int, length: Int, lines: Int, keepingChunks: Bool) {
        var remaining = Self.entryBytes(length)
        while remaining > 0 {
            let inChunk = chunkBytes - queues[backend].headOffset
            if remaining < inChunk {
                queues[backend].headOffset += remaining
                break
            }
            remaining -= inChunk
            let chunk = queues[backend].headChunk
            queues[backend].headChunk = nextChunk[chunk]
            queues[backend].headOffset = 0
            release(chunk, from: backend, keepingChunks: keepingChunks)
        }
        queues[backend].packets -= 1
        queues[backend].lines -= lines
        queues[backend].bytes -= length
        heldPackets -= 1
        heldLines -= lines
        if queues[backend].packets == 0 {
            // The last entry ended inside a chunk: that chunk goes too, so a drained queue holds nothing.
            if queues[backend].headChunk >= 0 {
                let chunk = queues[backend].headChunk
                release(chunk, from: backend, keepingChunks: keepingChunks)
            }
            queues[backend].headChunk = -1
            queues[backend].headOffset = 0
            queues[backend].tailChunk = -1
            queues[backend].tailOffset = 0
        }
    }

    private mutating func release(_ chunk: Int, from backend: Int, keepingChunks: Bool) {
        queues[backend].chunks -= 1
        if queues[backend].tailChunk == chunk {
            queues[backend].tailChunk = -1
            queues[backend].tailOffset = 0
        }
        if keepingChunks { spares.append(chunk) } else { freeChunk(chunk) }
    }

    /// Checks the counts against the chains; used in `assert` after every change.
    public func verifyInvariants() -> Bool {
        var chunks = 0, packets = 0, lines = 0
        for queue in queues {
            guard queue.packets >= 0, queue.lines >= 0, queue.bytes >= 0, queue.chunks >= 0 else { return false }
            guard (queue.packets == 0) == (queue.headChunk < 0), (queue.headChunk < 0) == (queue.tailChunk < 0) else { return false }
            var length = 0
            var chunk = queue.headChunk
            while chunk >= 0 {
                length += 1
                if chunk == queue.tailChunk { break }
                chunk = nextChunk[chunk]
            }
            guard length == queue.chunks else { return false }
            chunks += queue.chunks
            packets += queue.packets
            lines += queue.lines
        }
        return chunks + spares.count == memory.mappedCount && packets == heldPackets && lines == heldLines
            && spares.count == 0
    }
}
