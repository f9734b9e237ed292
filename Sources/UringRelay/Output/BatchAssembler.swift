import RelayKernel
///
/// With a mirror pool (`--mirror`), its backends are batched here too, at indices past the
/// primary pool's (`backendCount + m`, `appendMirror`), from slots of their own: the pool has
/// `mirrorSlots` more slots, and the mirror never holds more than that many at once. So the
/// primary pool always has every slot it would have without a mirror (`canAcceptDatagram`
/// does not count the mirror's unused share as free), and a mirror whose slots are all in use
/// (a slow or stuck mirror backend) loses its own lines, never a primary's slot.
import BasicContainers

/// Packs lines into one outgoing datagram per backend and says when each is ready to send.
///
/// Per backend there is at most one *open* batch, a slot of the send-buffer pool being
/// filled. Each line is followed by `\n`, and the newline counts toward the length: a batch
/// never exceeds `packetBytes`, newlines included.
/// - a line that does not fit closes the open batch (it becomes *ready*) and opens a new one;
/// - a line that cannot fit with its newline (`packetBytes` bytes or more) closes the open
///   batch and goes alone in its own packet, *without* a newline: a line of exactly
///   `packetBytes` goes out as exactly `packetBytes`, and the longest line UDP over IPv4 can
///   carry (`largestDatagramBytes`, 65 507 bytes) can still be sent. Longer lines never reach
///   the assembler: the scanner drops and counts them (`LineScanner.Malformation.tooLong`);
/// - a batch is also closed `flushInterval` after its first line (see `closeExpired`).
/// ```
/// packetBytes 16; lines a:1|c, b:22|c, c.name:12|ms, x:12345678901|ms (16 bytes):
///   "a:1|c\nb:22|c\n"     13 bytes: with "c.name:12|ms\n" it would be 26
///   "c.name:12|ms\n"      13 bytes: the next line cannot fit with its newline
///   "x:12345678901|ms"    16 bytes: alone, without a newline
/// ```
/// A StatsD server ends a line at `\n` or at the end of the datagram (etsy statsd splits the
/// datagram on `\n`; statsite appends a final newline where one is missing), so a packet's last
/// line needs no newline. The Go StatsRelay sends every line with its newline and does not
/// count it toward `-packetlen`: its packets can run a byte over, and a 65 507-byte line fails to go.
///
/// Ready slots are queued in order; the worker turns each into a `send` SQE and, when its
/// completion arrives, calls `completeSend` to free the slot. No empty batch is ever ready.
public struct BatchAssembler: ~Copyable {
    /// The outgoing packet memory.
    public internal(set) var pool: SendBufferPool
    /// The largest datagram sent, unless a single line is longer.
    public let packetBytes: Int
    /// The largest UDP payload over IPv4 (65 535 minus the 20-byte IP and 8-byte UDP headers):
    /// the longest line the relay can send to any backend. IPv6 carries 20 bytes more, but
    /// where a line goes may change (rehash, a DNS move), so whether it can be sent must not.
    public static let largestDatagramBytes = 65_507
    /// How many backends there are in the primary pool.
    public let backendCount: Int
    /// How many backends the mirror pool has (0: no mirror).
    public let mirrorBackendCount: Int
    /// Slots only the mirror may take, in all.
    public let mirrorSlots: Int
    /// Of `mirrorSlots`, those not in use: the pool's free slots beyond the primary's.
    public private(set) var mirrorSlotsFree: Int
    /// Free slots needed before a datagram is taken on: enough for every packet one datagram
    /// can close, so appending never runs out of slots midway.
    public let reserveSlots: Int
    // Fixed-capacity arrays: touched for every line, without copy-on-write checks.
    private var openSlot: RigidArray<Int32>
    private var openedAt: RigidArray<UInt64>
    /// Ready slots in order; at most every slot of the pool.
    private var ready: RigidArray<Int32>
    private var readyHead = 0

    /// `\n`, appended after a rewritten line's pieces.
    private let newline: RigidArray<UInt8>

    /// Creates an assembler and its pool.
    ///
    /// - Parameters:
    ///   - backendCount: backends to batch for.
    ///   - packetBytes: the packet length limit (`--packet-len`).
    ///   - maxLineBytes: the longest line possible (the largest datagram accepted, plus what a
    ///     rewrite adds to a line).
    ///   - datagramBytes: the most bytes one datagram's lines add up to, newlines included
    ///     (more than `maxLineBytes` when lines are rewritten: `LineRewrite.rewrittenDatagramBytes`);
    ///     `nil`: `maxLineBytes`.
    ///   - mirrorBackendCount: backends of the mirror pool (0: none), batched at indices
    ///     `backendCount…` from slots of their own.
    public init(
        backendCount: Int, mirrorBackendCount: Int = 0, packetBytes: Int, maxLineBytes: Int, datagramBytes: Int? = nil
    ) throws(Errno) {
        precondition(backendCount > 0 && mirrorBackendCount >= 0 && packetBytes > 1)
        // The reserve arithmetic is explained at RingSizing, which the ring is sized by too.
        let sizing = RingSizing(
            receiveBuffers: 0, packetBytes: packetBytes, maxLineBytes: datagramBytes ?? maxLineBytes, backendCount: backendCount,
            mirrorBackendCount: mirrorBackendCount)
        let capacity = sizing.sendSlots
        reserveSlots = sizing.reserveSlots
        mirrorSlots = sizing.mirrorSlots
        mirrorSlotsFree = sizing.mirrorSlots
        pool = try SendBufferPool(
            capacity: capacity, slotBytes: max(packetBytes, maxLineBytes + 1), packetLimit: packetBytes)
        self.packetBytes = packetBytes
        self.backendCount = backendCount
        self.mirrorBackendCount = mirrorBackendCount
        openSlot = RigidArray(repeating: -1, count: backendCount + mirrorBackendCount)
        openedAt = RigidArray(repeating: 0, count: backendCount + mirrorBackendCount)
        ready = RigidArray(capacity: capacity)
        newline = RigidArray(repeating: UInt8(ascii: "\n"), count: 1)
    }

    /// Whether there are enough free slots to take on one more datagram: the primary pool's
    /// (the mirror's unused slots are not its to take; the mirror never holds a datagram back).
    @inline(__always)
    public var canAcceptDatagram: Bool { pool.freeCount - mirrorSlotsFree >= reserveSlots }

    /// Appends one line for `backend`.
    ///
    /// - Parameters:
    ///   - line: the line's bytes, without `\n`.
    ///   - now: the loop turn's monotonic time, recorded when a batch opens.
    /// - Returns: `false` if no slot was free (the line is not packed; the caller counts it).
    /// - Precondition: `line.byteCount <= largestDatagramBytes` (the scanner drops longer ones).
    @inline(__always)
    public mutating func append(_ line: RawSpan, to backend: Int, now: UInt64) -> Bool {
        // `slot(forLineOf:backend:now:)` written out: this is the path of every line.
        let needed = line.byteCount + 1
        var slot = Int(openSlot[backend])
        if slot >= 0 && pool.length(of: slot) + needed > packetBytes {
            close(backend)
            slot = -1
        }
        if needed > packetBytes {
            // Alone in its own packet, sent at once, after what was already open for this
            // backend; without its newline, which would take it past --packet-len (or, at
            // 65 507 bytes, past what UDP over IPv4 carries).
            guard let alone = pool.acquire(for: backend) else { return false }
            pool.appendPacked(line, to: alone)
            pool.addLines(1, to: alone)
            enqueue(Int32(alone))
            return true
        }
        if slot < 0 {
            guard let fresh = pool.acquire(for: backend) else { return false }
            slot = fresh
            openSlot[backend] = Int32(fresh)
            openedAt[backend] = now
        }
        pool.append(line, to: slot)
        return true
    }

    /// `append` of a line that fits in `backend`'s open batch, with its newline: packs it and
    /// returns `true`; otherwise packs nothing and returns `false` (the caller then calls
    /// `append`, which opens or closes a batch). The common line's whole path: small enough to
    /// be inlined in the line loop without the registers the rest of `append` needs.
    @inline(__always)
    public mutating func appendToOpenBatch(_ line: RawSpan, of backend: Int) -> Bool {
        let slot = Int(openSlot[backend])
        return slot >= 0 && pool.append(line, toSlotIfRoom: slot)
    }

    /// `appendToOpenBatch` of the line `range` of `datagram`, as the line scan found it in that
    /// datagram (no bounds check again: `SendBufferPool.append(_:scannedFrom:toSlotIfRoom:)`).
    @inline(__always)
    public mutating func appendToOpenBatch(_ range: Range<Int>, scannedFrom datagram: RawSpan, of backend: Int) -> Bool {
        let slot = Int(openSlot[backend])
        return slot >= 0 && pool.append(range, scannedFrom: datagram, toSlotIfRoom: slot)
    }

    /// Appends one line for mirror backend `mirror` (0-based in the mirror pool), from the
    /// mirror's own slots: as `append`, but `false` also when the mirror's slots are all in use.
    ///
    /// - Precondition: `mirror < mirrorBackendCount`; `line.byteCount <= largestDatagramBytes`.
    @inline(__always)
    public mutating func appendMirror(_ line: RawSpan, to mirror: Int, now: UInt64) -> Bool {
        guard let (slot, isAlone) = slot(forLineOf: line.byteCount, backend: backendCount + mirror, now: now) else { return false }
        pool.appendPacked(line, to: slot)
        pool.addLines(1, to: slot)
        if isAlone {
            enqueue(Int32(slot))
        } else {
            Self.appendNewline(to: slot, of: &pool, newline)
        }
        return true
    }

    /// Whether `backend` (an index of `pool.backend(of:)`) is one of the mirror pool's.
    @inline(__always)
    public func isMirror(_ backend: Int) -> Bool { backend >= backendCount }

    /// Appends one rewritten line for `backend`, copied once from its pieces into the packet:
    /// `prefix`, `head`, `insert`, `tail` (`LineRewriter`). Packed exactly as `append` packs a
    /// line of the pieces' total length, which is what counts toward `packetBytes`.
    /// `backend` may be a mirror backend's index (`backendCount + m`): its slot then comes from
    /// the mirror's own share, as `appendMirror`'s.
    ///
    /// - Returns: `false` if no slot was free.
    /// - Precondition: the pieces add up to at most `largestDatagramBytes` and `maxLineBytes`.
    @inline(__always)
    public mutating func append(
        prefix: RawSpan, head: RawSpan, insert: RawSpan, tail: RawSpan, to backend: Int, now: UInt64
    ) -> Bool {
        let length = prefix.byteCount &+ head.byteCount &+ insert.byteCount &+ tail.byteCount
        guard let (slot, isAlone) = slot(forLineOf: length, backend: backend, now: now) else { return false }
        if !prefix.isEmpty { pool.appendPacked(prefix, to: slot) }
        pool.appendPacked(head, to: slot)
        if !insert.isEmpty { pool.appendPacked(insert, to: slot) }
        if !tail.isEmpty { pool.appendPacked(tail, to: slot) }
        pool.addLines(1, to: slot)
        if isAlone {
            enqueue(Int32(slot))
        } else {
            Self.appendNewline(to: slot, of: &pool, newline)
        }
        return true
    }

    /// Appends `\n` to `slot` (static, on its parts: the newline is read while the pool is written).
    @inline(__always)
    private static func appendNewline(to slot: Int, of pool: inout SendBufferPool, _ newline: borrowing RigidArray<UInt8>) {
        pool.appendPacked(newline.span.bytes, to: slot)
    }

    /// The slot a line of `length` bytes goes into for `backend`, and whether it goes alone
    /// (then without its newline, and the caller queues the slot at once); `nil` when no slot
    /// is free. Closes the open batch if the line and its newline do not fit in it.
    @inline(__always)
    private mutating func slot(forLineOf length: Int, backend: Int, now: UInt64) -> (Int, Bool)? {
        let needed = length + 1
        var slot = Int(openSlot[backend])
        if slot >= 0 && pool.length(of: slot) + needed > packetBytes {
            close(backend)
            slot = -1
        }
        if needed > packetBytes {
            // Alone in its own packet, sent at once, after what was already open for this
            // backend; without its newline, which would take it past --packet-len (or, at
            // 65 507 bytes, past what UDP over IPv4 carries).
            guard let alone = acquire(for: backend) else { return nil }
            return (alone, true)
        }
        if slot < 0 {
            guard let fresh = acquire(for: backend) else { return nil }
            slot = fresh
            openSlot[backend] = Int32(fresh)
            openedAt[backend] = now
        }
        return (slot, false)
    }

    /// A free slot for `backend`; a mirror backend's only from the mirror's own share.
    @inline(__always)
    private mutating func acquire(for backend: Int) -> Int? {
        guard backend >= backendCount else { return pool.acquire(for: backend) }
        guard mirrorSlotsFree > 0, let slot = pool.acquire(for: backend) else { return nil }
        mirrorSlotsFree -= 1
        return slot
    }

    /// Closes `backend`'s open batch, if any, making it ready.
    @inline(__always)
    private mutating func close(_ backend: Int) {
        let slot = openSlot[backend]
        guard slot >= 0 else { return }
        openSlot[backend] = -1
        enqueue(slot)
    }

    /// Appends a slot to the ready queue. Pending entries are distinct slots, so after the
    /// entries already handed out are dropped there is always room.
    @inline(__always)
    private mutating func enqueue(_ slot: Int32) {
        if ready.isFull {
            ready.removeSubrange(0..<readyHead)
            readyHead = 0
        }
        ready.append(slot)
    }

    /// Closes every batch opened at or before `now - interval`.
    public mutating func closeExpired(now: UInt64, interval: UInt64) {
        for backend in openSlot.indices where openSlot[backend] >= 0 && now &- openedAt[backend] >= interval {
            close(backend)
        }
    }

    /// Closes every open batch (at shutdown).
    public mutating func closeAll() {
        for backend in openSlot.indices { close(backend) }
    }

    /// When the oldest open batch falls due, or `nil` when none is open.
    public func nextDeadline(interval: UInt64) -> UInt64? {
        var earliest: UInt64?
        for backend in openSlot.indices where openSlot[backend] >= 0 {
            let due = openedAt[backend] &+ interval
            if earliest.map({ due < $0 }) ?? true { earliest = due }
        }
        return earliest
    }

    /// The next ready slot, oldest first, now owned by the caller until `completeSend`.
    @inline(__always)
    public mutating func nextReady() -> Int? {
        guard readyHead < ready.count else {
            if readyHead > 0 {
                ready.removeAll()
                readyHead = 0
            }
            return nil
        }
        let slot = Int(ready[readyHead])
        readyHead += 1
        return slot
    }

    /// Frees a slot whose send completed and returns what it carried, for the counters.
    @inline(__always)
    public mutating func completeSend(_ slot: Int) -> (backend: Int, lines: Int, bytes: Int) {
        let carried = (pool.backend(of: slot), pool.lineCount(of: slot), pool.length(of: slot))
        pool.release(slot)
        if carried.0 >= backendCount { mirrorSlotsFree += 1 }
        return carried
    }

    /// Copies the oldest held packet of `backend` into a fresh slot, if the replay pace allows
    /// it now, and returns the slot (for the caller to send at once, not through the ready
    /// queue) and its line count.
    public mutating func replay(from holds: inout HoldStore, backend: Int, now: UInt64) -> (slot: Int, lines: Int)? {
        guard let length = holds.replayableLength(of: backend, now: now), length <= pool.slotBytes,
              let slot = pool.acquire(for: backend) else { return nil }
        guard let lines = holds.replayNext(backend: backend, now: now, { piece in pool.appendPacked(piece, to: slot) }) else {
            pool.release(slot)
            return nil
        }
        pool.addLines(lines, to: slot)
        return (slot, lines)
    }

    /// Leaves the pool's memory mapped after destruction (see `SendBufferPool`).
    public mutating func keepMappedAfterDestruction() { pool.keepMappedAfterDestruction() }

    /// Whether any batch is open or ready.
    public var hasPendingBatches: Bool {
        readyHead < ready.count || openSlot.indices.contains { openSlot[$0] >= 0 }
    }
}
