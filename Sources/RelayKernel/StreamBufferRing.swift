import CLiburing
import Glibc

/// The provided-buffer ring (buffer group) the TCP ingest connections' multishot `recv`s fill
/// on the io_uring driver: a group of its own, apart from the UDP receive group
/// (`ProvidedBufferRing`), so datagrams never wait for buffers a slow stream holds.
///
/// Mapped and registered by hand, as `ProvidedBufferRing` is (liburing 2.3 has no
/// `io_uring_setup_buf_ring`). A stream has no datagram bounds: the kernel fills a buffer with
/// whatever bytes wait on the socket, up to `bufferBytes`, and with a receive *bundle*
/// (`IORING_RECVSEND_BUNDLE`, Linux 6.10) one CQE covers several buffers:
/// ```
///  ring slots:   … | head | head+1 | head+2 | …        (consumed in order, wrapping at count)
///  buffer ids:       7      2        5                 (whatever was recycled into each slot)
///  CQE: res = 2 × bufferBytes + 100, buffer id 7  →  buffer 7 full, 2 full, 5 holds 100 bytes
/// ```
/// The kernel takes buffers from the ring's head in order, so the buffers of a bundle are the
/// ring's next slots, not the next ids: this keeps the id written into each slot (`slotIDs`)
/// and its own count of slots consumed, checks the CQE's id against the slot at that count,
/// and reads the rest of the bundle from the slots after it. Every buffer of a bundle but the
/// last is full (the kernel copies into them in order); the last holds the remainder.
///
/// A buffer the kernel filled is *held* until `recycle(_:)` (the worker may park it while the
/// core has no room); `publish()` hands recycled buffers back with one store.
///
/// - Warning: close the ring this is registered with before this is destroyed: the kernel
///   writes into these buffers for as long as a receive is armed.
public struct StreamBufferRing: ~Copyable {
    private let ringEntries: UnsafeMutableRawPointer?
    private let ringBytes: Int
    private let storage: UnsafeMutableRawPointer?
    private let storageBytes: Int
    /// The id written into each ring slot, slot `i` at `i & (count - 1)`.
    private let slotIDs: UnsafeMutablePointer<UInt16>
    private var bufferRing: UnsafeMutablePointer<io_uring_buf_ring>? {
        ringEntries?.assumingMemoryBound(to: io_uring_buf_ring.self)
    }

    /// The buffer group ID the receives select from.
    public let groupID: UInt16
    /// How many buffers the group holds (a power of two; 0 for `init()`).
    public let count: Int
    /// The bytes of each buffer.
    public let bufferBytes: Int
    /// Buffers sit this far apart: `bufferBytes` rounded up to a cache line.
    private let stride: Int
    /// Ring slots published to the kernel so far (wrapping).
    private var published = 0
    /// Ring slots the kernel consumed so far, by the CQEs taken (wrapping).
    private var consumed = 0
    /// Recycled buffers written to the ring but not yet published.
    private var unpublished = 0
    /// Buffers filled by the kernel and not yet recycled.
    public private(set) var held = 0
    private var keepsMapping = false

    /// No buffer group (the portable driver): `count` is 0 and nothing is mapped.
    public init() {
        ringEntries = nil
        storage = nil
        ringBytes = 0
        storageBytes = 0
        slotIDs = .allocate(capacity: 1)
        groupID = 0
        count = 0
        bufferBytes = 0
        stride = 0
    }

    /// Maps `count` buffers of `bufferBytes` each, registers them as group `groupID` of `ring`
    /// (`io_uring_register_buf_ring(3)`), and gives them all to the kernel.
    ///
    /// - Precondition: `count` is a power of two no larger than 32768; `bufferBytes` is 1 to
    ///   1 MiB.
    /// - Throws: `Errno` from `mmap` or the registration (`ENOMEM`: the memlock limit).
    public init(ring: borrowing Ring, groupID: UInt16, count: Int, bufferBytes: Int) throws(Errno) {
        precondition(count > 0 && count & (count - 1) == 0 && count <= 32_768, "buffer count must be a power of two ≤ 32768")
        precondition(bufferBytes > 0 && bufferBytes <= 1 << 20, "a stream buffer is 1 byte to 1 MiB")
        let stride = (bufferBytes + 63) & ~63
        let mapping = try BufferGroupMapping(ring: ring, groupID: groupID, count: count, stride: stride)
        let (entries, buffers) = (mapping.entries, mapping.buffers)
        let (ringBytes, storageBytes) = (mapping.entriesBytes, mapping.buffersBytes)
        ringEntries = entries
        storage = buffers
        self.ringBytes = ringBytes
        self.storageBytes = storageBytes
        slotIDs = .allocate(capacity: count)
        self.groupID = groupID
        self.count = count
        self.bufferBytes = bufferBytes
        self.stride = stride
        io_uring_buf_ring_init(bufferRing!)
        for id in 0..<count { write(bufferID: UInt16(id), at: id) }
        io_uring_buf_ring_advance(bufferRing!, Int32(count))
        published = count
        assert(verifyInvariants())
    }

    deinit {
        slotIDs.deallocate()
        guard !keepsMapping else { return }
        if let ringEntries { munmap(ringEntries, ringBytes) }
        if let storage { munmap(storage, storageBytes) }
    }

    /// Leaves the buffers mapped when this owner goes away, for when the kernel may still
    /// write into them (a receive whose end never came).
    public mutating func keepMappedAfterDestruction() { keepsMapping = true }

    /// Whether this is a registered group (not `init()`).
    public var isRegistered: Bool { count > 0 }

    /// How many buffers the kernel can fill right now.
    public var available: Int { count - held - unpublished }

    /// Writes `bufferID` into the ring slot `offset` past the published tail, and notes it.
    private func write(bufferID: UInt16, at offset: Int) {
        let mask = count - 1
        let base = storage! + Int(bufferID) * stride
        io_uring_buf_ring_add(bufferRing!, base, UInt32(bufferBytes), bufferID, io_uring_buf_ring_mask(UInt32(count)), Int32(offset))
        slotIDs[(published &+ offset) & mask] = bufferID
    }

    /// Takes the buffers one receive CQE filled; the caller holds them until `recycle`, and
    /// reads their ids with `takenID(_:of:)` (in stream order), each full but the last, which
    /// holds `result` less the others' bytes.
    ///
    /// - Parameters:
    ///   - firstID: the CQE's buffer id (`IORING_CQE_F_BUFFER`).
    ///   - result: the CQE's `res`, the bytes received (positive).
    ///   - bundle: the receive was armed with `IORING_RECVSEND_BUNDLE` (the CQE may cover
    ///     several buffers); without, a CQE fills one buffer.
    /// - Returns: how many buffers it covered, or `nil` when the kernel's numbers cannot be
    ///   (more bytes than the buffers published hold, an id that is not the next slot's):
    ///   nothing was taken.
    public mutating func take(firstID: UInt16, result: Int32, bundle: Bool) -> Int? {
        guard count > 0, result > 0, Int(firstID) < count else { return nil }
        let bytes = Int(result)
        let buffers = bundle ? (bytes + bufferBytes - 1) / bufferBytes : 1
        // The kernel consumes only published slots, in order, starting with the CQE's buffer.
        guard bytes <= buffers * bufferBytes, buffers <= published &- consumed,
              slotIDs[consumed & (count - 1)] == firstID else { return nil }
        consumed &+= buffers
        held += buffers
        assert(verifyInvariants())
        return buffers
    }

    /// The id of buffer `index` (from 0) of the `buffers` the last `take` covered.
    ///
    /// - Precondition: `index < buffers`, `buffers` what the last `take` returned.
    public func takenID(_ index: Int, of buffers: Int) -> UInt16 {
        precondition(index >= 0 && index < buffers && buffers <= count)
        return slotIDs[(consumed &- buffers &+ index) & (count - 1)]
    }

    /// Lends `range` of buffer `bufferID`'s bytes to `body` as a safe view.
    ///
    /// - Precondition: the buffer is held (taken, not recycled) and `range` lies within what
    ///   the kernel wrote into it.
    public func withBytes<Result>(of bufferID: UInt16, in range: Range<Int>, _ body: (RawSpan) -> Result) -> Result {
        precondition(Int(bufferID) < count && range.lowerBound >= 0 && range.upperBound <= bufferBytes)
        // Held by this worker until recycled: the kernel does not write into it meanwhile.
        return body(UnsafeRawBufferPointer(start: storage! + Int(bufferID) * stride + range.lowerBound, count: range.count).bytes)
    }

    /// Gives a held buffer back to the kernel (visible after the next `publish()`).
    ///
    /// - Precondition: `bufferID` was taken and not recycled since.
    public mutating func recycle(_ bufferID: UInt16) {
        write(bufferID: bufferID, at: unpublished)
        unpublished += 1
        held -= 1
        assert(verifyInvariants())
    }

    /// Publishes every recycled buffer to the kernel with a single release store.
    public mutating func publish() {
        guard unpublished > 0 else { return }
        io_uring_buf_ring_advance(bufferRing!, Int32(unpublished))
        published &+= unpublished
        unpublished = 0
    }

    /// Checks the counts; used in `assert` after every change.
    public func verifyInvariants() -> Bool {
        held >= 0 && unpublished >= 0 && held + unpublished <= count && published &- consumed == count - held - unpublished
    }
}
