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
    // Fixed-capacity arrays: written for every line, they must not pay an `Array`'s
    // copy-on-write uniqueness check on each write.
    @usableFromInline var free: RigidArray<Int32>
    @usableFromInline var lengths: RigidArray<Int32>
    @usableFromInline var lines: RigidArray<Int32>
    @usableFromInline var backends: RigidArray<Int32>

    /// Maps `capacity` slots of `slotBytes` each.
    public init(capacity: Int, slotBytes: Int) throws(Errno) {
        precondition(capacity > 0 && slotBytes > 0)
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
        lengths = RigidArray(repeating: 0, count: capacity)
        lines = RigidArray(repeating: 0, count: capacity)
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
        lengths[index] = 0
        lines[index] = 0
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
        for slot in backends.indices where backends[slot] >= 0 { total += Int(lines[slot]) }
        return total
    }

    /// Bytes packed into `slot` so far.
    @inlinable @inline(__always)
    public func length(of slot: Int) -> Int { Int(lengths[slot]) }

    /// Lines packed into `slot` so far.
    @inlinable @inline(__always)
    public func lineCount(of slot: Int) -> Int { Int(lines[slot]) }

    /// The backend `slot` was acquired for.
    @inlinable @inline(__always)
    public func backend(of slot: Int) -> Int { Int(backends[slot]) }

    /// Appends `line` and a `\n` to `slot`.
    ///
    /// - Precondition: `length(of: slot) + line.byteCount + 1 <= slotBytes`.
    @inlinable @inline(__always)
    public mutating func append(_ line: RawSpan, to slot: Int) {
        let offset = Int(lengths[slot])
        let count = line.byteCount
        let end = offset + count + 1
        precondition(end <= slotBytes, "line does not fit in the send slot")
        // `slot` was checked by the subscript above, `end` against the slot: the arithmetic
        // below cannot overflow (it runs for every line).
        let destination = storage + (slot &* slotBytes &+ offset)
        line.withUnsafeBytes { source in
            // A line is short: copied inline, not through a `memcpy` call (`cl_copy_line`).
            if let base = source.baseAddress {
                cl_copy_line(
                    destination.assumingMemoryBound(to: UInt8.self), base.assumingMemoryBound(to: UInt8.self), count)
            }
        }
        destination.storeBytes(of: UInt8(ascii: "\n"), toByteOffset: count, as: UInt8.self)
        lengths[slot] = Int32(truncatingIfNeeded: end)
        lines[slot] &+= 1
    }

    /// Appends already packed bytes (a held packet, possibly in pieces) to `slot`.
    ///
    /// - Precondition: they fit.
    public mutating func appendPacked(_ bytes: RawSpan, to slot: Int) {
        let offset = Int(lengths[slot])
        precondition(offset + bytes.byteCount <= slotBytes, "packet does not fit in the send slot")
        let destination = storage + slot * slotBytes + offset
        bytes.withUnsafeBytes { source in
            if let base = source.baseAddress { destination.copyMemory(from: base, byteCount: source.count) }
        }
        lengths[slot] = Int32(offset + bytes.byteCount)
    }

    /// Records that `count` more lines are in `slot` (after `appendPacked`).
    public mutating func addLines(_ count: Int, to slot: Int) {
        lines[slot] += Int32(count)
    }

    /// Lends the packed bytes of `slot` as a safe view.
    public func withBytes<Result>(ofSlot slot: Int, _ body: (RawSpan) -> Result) -> Result {
        body(UnsafeRawBufferPointer(start: storage + slot * slotBytes, count: Int(lengths[slot])).bytes)
    }

    /// The packed bytes of `slot` for a `send` SQE.
    ///
    /// - Warning: the memory stays valid for the pool's lifetime; the slot must not be
    ///   released or refilled until the send's CQE arrives.
    package func unsafeBytes(ofSlot slot: Int) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: storage + slot * slotBytes, count: Int(lengths[slot]))
    }

    /// Checks that every free slot is unassigned; used in `assert`.
    public func verifyInvariants() -> Bool {
        for index in free.indices where backends[Int(free[index])] != -1 { return false }
        return true
    }
}
