import BasicContainers
import CLiburing
import Glibc

/// Fixed slots of outgoing packet memory that the kernel reads while a `send` is in flight.
///
/// A slot is *free*, *filling* (a batch is being packed into it) or *in flight* (submitted,
/// waiting for its CQE). Free slots are kept on a stack so the same few slots are reused and
/// the rest of the mapping is never touched: resident memory follows the peak in-flight count,
/// not the capacity.
///
/// - Warning: close the ring before this is destroyed while sends are in flight.
public struct SendBufferPool: ~Copyable {
    @usableFromInline let storage: UnsafeMutableRawPointer
    private let storageBytes: Int
    /// Bytes per slot: the largest packet this pool can hold.
    public let slotBytes: Int
    /// How many slots exist.
    public let capacity: Int
    /// The most bytes `append(_:toSlotIfRoom:)` fills a slot with: the packet length limit,
    /// at most `slotBytes`.
    public let packetLimit: Int
    /// How full a slot is: its bytes and its lines, side by side so that a line's append reads
    /// and writes one element.
    @usableFromInline struct Fill {
        @usableFromInline var length: Int32
        @usableFromInline var lines: Int32
        @usableFromInline static var empty: Fill { Fill(length: 0, lines: 0) }
        @usableFromInline init(length: Int32, lines: Int32) {
            self.length = length
            self.lines = lines
        }
    }
    // Fixed-capacity arrays: written for every line, they must not pay an `Array`'s
    // copy-on-write uniqueness check on each write.
    @usableFromInline var free: RigidArray<Int32>
    @usableFromInline var fills: RigidArray<Fill>
    @usableFromInline var backends: RigidArray<Int32>

    /// Maps `capacity` slots of `slotBytes` each; `append(_:toSlotIfRoom:)` fills one with at
    /// most `packetLimit` bytes (at most `slotBytes`, the default).
    public init(capacity: Int, slotBytes: Int, packetLimit: Int? = nil) throws(Errno) {
        precondition(capacity > 0 && slotBytes > 0)
        self.packetLimit = min(packetLimit ?? slotBytes, slotBytes)
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let storageBytes = (capacity * slotBytes + page - 1) / page * page
        guard let memory = mmap(nil, storageBytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0),
              memory != MAP_FAILED else { throw Errno.current }
        self.storageBytes = storageBytes
        storage = memory
        self.slotBytes = slotBytes
        self.capacity = capacity
        free = RigidArray(capacity: capacity)
        for slot in (0..<Int32(capacity)).reversed() { free.append(slot) }
        fills = RigidArray(repeating: .empty, count: capacity)
        backends = RigidArray(repeating: -1, count: capacity)
    }

    deinit {
        if !keepsMapping { munmap(storage, storageBytes) }
    }

    private var keepsMapping = false

    /// Leaves the memory mapped when this owner goes away, for when the kernel may still
    /// read from it (a send that could not be confirmed complete).
    public mutating func keepMappedAfterDestruction() { keepsMapping = true }

    /// How many slots are free.
    public var freeCount: Int { free.count }

    /// Takes a free slot for `backend`, empty; `nil` when every slot is in use.
    @inlinable @inline(__always)
    public mutating func acquire(for backend: Int) -> Int? {
        guard let slot = free.popLast() else { return nil }
        let index = Int(slot)
        fills[index] = .empty
        backends[index] = Int32(backend)
        return index
    }

    /// Returns a slot to the free stack (after its send completed, or unsent at shutdown).
    @inlinable @inline(__always)
    public mutating func release(_ slot: Int) {
        precondition(backends[slot] >= 0, "send slot released twice")
        backends[slot] = -1
        free.append(Int32(slot))
        assert(verifyInvariants())
    }

    /// Lines in every slot that is not free (filling or in flight); for the exit report.
    public var linesInUse: Int {
        var total = 0
        for slot in backends.indices where backends[slot] >= 0 { total += Int(fills[slot].lines) }
        return total
    }

    /// Bytes packed into `slot` so far.
    @inlinable @inline(__always)
    public func length(of slot: Int) -> Int { Int(fills[slot].length) }

    /// Lines packed into `slot` so far.
    @inlinable @inline(__always)
    public func lineCount(of slot: Int) -> Int { Int(fills[slot].lines) }

    /// The backend `slot` was acquired for.
    @inlinable @inline(__always)
    public func backend(of slot: Int) -> Int { Int(backends[slot]) }

    /// Appends `line` and a `\n` to `slot`.
    ///
    /// - Precondition: `length(of: slot) + line.byteCount + 1 <= slotBytes`.
    @inlinable @inline(__always)
    public mutating func append(_ line: RawSpan, to slot: Int) {
        let fill = fills[slot]
        let end = Int(fill.length) + line.byteCount + 1
        precondition(end <= slotBytes, "line does not fit in the send slot")
        copy(line, to: slot, at: fill, end: end)
    }

    /// Appends `line` and a `\n` to `slot` if the slot then holds at most `packetLimit` bytes:
    /// the packet's fit test and the append's own in one (the common line's path).
    ///
    /// - Returns: whether the line was appended; `false` leaves the slot as it was.
    @inlinable @inline(__always)
    public mutating func append(_ line: RawSpan, toSlotIfRoom slot: Int) -> Bool {
        let fill = fills[slot]
        // A slot holds at most `slotBytes`, a line fewer than `Int.max / 2`: no overflow.
        let end = Int(fill.length) &+ line.byteCount &+ 1
        guard end <= packetLimit else { return false }
        copy(line, to: slot, at: fill, end: end)
        return true
    }

    /// `append(_:toSlotIfRoom:)` of the bytes `range` of `datagram`, a line its scan found in
    /// it, extracted with no bounds check again (the line loop's pack of every line, issue 16's
    /// instructions per line; kept here, in the unsafe target).
    ///
    /// - Precondition: `range` lies within `datagram` (checked in debug builds only).
    @inlinable @inline(__always)
    public mutating func append(_ range: Range<Int>, scannedFrom datagram: RawSpan, toSlotIfRoom slot: Int) -> Bool {
        assert(range.lowerBound >= 0 && range.upperBound <= datagram.byteCount, "scanned line outside its datagram")
        return append(datagram.extracting(unchecked: range), toSlotIfRoom: slot)
    }

    /// Copies `line` and a `\n` into `slot`, whose fill was `fill`, making it `end` bytes
    /// (checked by the caller to be at most `slotBytes`).
    @inlinable @inline(__always)
    mutating func copy(_ line: RawSpan, to slot: Int, at fill: Fill, end: Int) {
        let count = line.byteCount
        // `slot` was checked by the subscript, `end` against the slot: the arithmetic below
        // cannot overflow (it runs for every line).
        let destination = storage + (slot &* slotBytes &+ Int(fill.length))
        // The fill is written first: its operands are then dead during the copy, which would
        // otherwise keep them in spill slots around it (the compiler cannot move the store
        // past a copy through raw pointers).
        fills[slot] = Fill(length: Int32(truncatingIfNeeded: end), lines: fill.lines &+ 1)
        line.withUnsafeBytes { source in
            // A line is short: copied inline, not through a `memcpy` call (`cl_copy_line`).
            if let base = source.baseAddress {
                cl_copy_line(
                    destination.assumingMemoryBound(to: UInt8.self), base.assumingMemoryBound(to: UInt8.self), count)
            }
        }
        destination.storeBytes(of: UInt8(ascii: "\n"), toByteOffset: count, as: UInt8.self)
    }

    /// Appends already packed bytes (a held packet, possibly in pieces) to `slot`.
    ///
    /// - Precondition: they fit.
    public mutating func appendPacked(_ bytes: RawSpan, to slot: Int) {
        let offset = Int(fills[slot].length)
        precondition(offset + bytes.byteCount <= slotBytes, "packet does not fit in the send slot")
        let destination = storage + slot * slotBytes + offset
        bytes.withUnsafeBytes { source in
            if let base = source.baseAddress { destination.copyMemory(from: base, byteCount: source.count) }
        }
        fills[slot].length = Int32(offset + bytes.byteCount)
    }

    /// Records that `count` more lines are in `slot` (after `appendPacked`).
    public mutating func addLines(_ count: Int, to slot: Int) {
        fills[slot].lines += Int32(count)
    }

    /// Lends the packed bytes of `slot` as a safe view.
    public func withBytes<Result>(ofSlot slot: Int, _ body: (RawSpan) -> Result) -> Result {
        body(UnsafeRawBufferPointer(start: storage + slot * slotBytes, count: Int(fills[slot].length)).bytes)
    }

    /// The packed bytes of `slot` for a `send` SQE.
    ///
    /// - Warning: the memory stays valid for the pool's lifetime; the slot must not be
    ///   released or refilled until the send's CQE arrives.
    package func unsafeBytes(ofSlot slot: Int) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: storage + slot * slotBytes, count: Int(fills[slot].length))
    }

    /// Checks that every free slot is unassigned; used in `assert`.
    public func verifyInvariants() -> Bool {
        for index in free.indices where backends[Int(free[index])] != -1 { return false }
        return true
    }
}
