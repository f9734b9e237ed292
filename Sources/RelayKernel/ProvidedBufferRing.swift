import CLiburing
import Glibc

/// A ring of receive buffers the kernel picks from (a "provided buffer ring", buffer group).
///
/// liburing 2.3 has no `io_uring_setup_buf_ring`, so this maps the ring and the buffers itself
/// and registers them with `io_uring_register_buf_ring(3)`, as liburing's
/// `examples/io_uring-udp.c` does.
///
/// Each buffer receives one datagram through a multishot `recv` (`IORING_OP_RECV`), payload
/// only, from its first byte; buffers sit `stride` bytes apart:
/// ```
///  0                        maxPayloadBytes  bufferBytes           stride
/// +---------------------------------------+--+---------------------+
/// | payload (a datagram that is accepted) |+1| padding to 64 bytes |
/// +---------------------------------------+--+---------------------+
/// ```
/// The kernel is given `bufferBytes = maxPayloadBytes + 1` bytes per buffer, and the receive is
/// armed with `MSG_TRUNC`, which makes UDP report a datagram's full length even when only the
/// buffer's worth was copied. So a result above `maxPayloadBytes` is a datagram too long for
/// the relay: the one byte more makes that hold even where a kernel ignored `MSG_TRUNC` (its
/// result would then be exactly `bufferBytes`). A buffer the kernel has filled is *held* by
/// the worker until `recycle(_:)` gives it back; `publish()` makes recycled buffers visible
/// to the kernel with one store.
///
/// Not every buffer need circulate: `publish(circulating:)` keeps some out of the kernel's
/// ring, in a reserve, and puts them back when more are wanted. Every buffer id is always
/// exactly one of: in the kernel's ring (`available` of them), held, recycled and not yet
/// published (`unpublished`), or reserved.
///
/// An empty datagram takes no buffer: multishot `recv` reports it as a result of 0 without
/// `IORING_CQE_F_BUFFER` and ends (see `Ring.armMultishotReceive`).
///
/// - Warning: close the ring this is registered with before this is destroyed: the kernel
///   writes into these buffers for as long as a receive is armed.
public struct ProvidedBufferRing: ~Copyable {
    @usableFromInline let ringEntries: UnsafeMutableRawPointer
    private let ringBytes: Int
    @usableFromInline let storage: UnsafeMutableRawPointer
    private let storageBytes: Int
    @inlinable var bufferRing: UnsafeMutablePointer<io_uring_buf_ring> {
        ringEntries.assumingMemoryBound(to: io_uring_buf_ring.self)
    }

    /// The buffer group ID SQEs select from.
    public let groupID: UInt16
    /// How many buffers the ring holds (a power of two).
    public let count: Int
    /// The bytes the kernel may write into each buffer: `maxPayloadBytes + 1`.
    public let bufferBytes: Int
    /// The longest datagram relayed (`--max-datagram`); a longer one is truncated.
    public let maxPayloadBytes: Int
    /// The distance between the starts of two buffers: `bufferBytes` rounded up to a cache
    /// line, so every payload starts aligned (the line scanner reads it in vector loads).
    @usableFromInline let stride: Int
    /// `bufferBytes` and the ring's index mask as `io_uring_buf_ring_add` takes them, converted
    /// once: `recycle` runs for every datagram.
    @usableFromInline let lengthField: UInt32
    @usableFromInline let ringMask: Int32
    /// Each buffer's address as a ring entry takes it (`storage + id * stride`), by id: the
    /// recycle loop reads it instead of computing it (`cl_recycle_parked`).
    @usableFromInline let addresses: UnsafeMutablePointer<UInt64>
    /// Buffers the kernel filled and the worker has not yet recycled.
    public var held: Int { heldCount }
    @usableFromInline var heldCount = 0
    /// Recycled buffers written to the ring but not yet published.
    @usableFromInline var unpublished: Int = 0
    /// The ids kept out of circulation, a stack: the first `reserved` of `count` slots,
    /// allocated once (nothing is allocated as buffers leave or rejoin circulation).
    private let reserve: UnsafeMutablePointer<UInt16>
    /// Buffers kept out of the kernel's ring (`publish(circulating:)`): not held, holding no
    /// data, neither filled by the kernel nor published until more are wanted.
    public private(set) var reserved = 0
    /// Buffers in circulation: all but the reserved ones.
    public var circulating: Int { count &- reserved }

    /// Maps `count` buffers for datagrams of up to `payloadBytes` (one byte more each, to tell
    /// a longer datagram; see the type), registers them as group `groupID`, and gives them all
    /// to the kernel.
    ///
    /// - Precondition: `count` is a power of two no larger than 32768; `payloadBytes` is
    ///   positive and below 65535 (a UDP payload; the kernel takes a buffer length of 32 bits).
    public init(ring: borrowing Ring, groupID: UInt16, count: Int, payloadBytes: Int) throws(Errno) {
        precondition(count > 0 && count & (count - 1) == 0 && count <= 32_768, "buffer count must be a power of two ≤ 32768")
        precondition(payloadBytes > 0 && payloadBytes < 65_536, "a datagram payload is 1-65535 bytes")
        let bufferBytes = payloadBytes + 1
        let stride = (bufferBytes + 63) & ~63
        let mapping = try BufferGroupMapping(ring: ring, groupID: groupID, count: count, stride: stride)
        let (entries, buffers) = (mapping.entries, mapping.buffers)
        let (ringBytes, storageBytes) = (mapping.entriesBytes, mapping.buffersBytes)
        self.groupID = groupID
        self.count = count
        self.bufferBytes = bufferBytes
        self.maxPayloadBytes = payloadBytes
        self.stride = stride
        lengthField = UInt32(bufferBytes)
        ringMask = io_uring_buf_ring_mask(UInt32(count))
        self.ringBytes = ringBytes
        self.storageBytes = storageBytes
        ringEntries = entries
        storage = buffers
        addresses = .allocate(capacity: count)
        reserve = .allocate(capacity: count)
        for id in 0..<count { (addresses + id).initialize(to: UInt64(UInt(bitPattern: buffers + id * stride))) }
        io_uring_buf_ring_init(bufferRing)
        for id in 0..<count { write(bufferID: UInt16(id), at: id) }
        io_uring_buf_ring_advance(bufferRing, Int32(count))
        assert(verifyInvariants())
    }

    deinit {
        addresses.deallocate()
        reserve.deallocate()
        guard !keepsMapping else { return }
        munmap(ringEntries, ringBytes)
        munmap(storage, storageBytes)
    }

    private var keepsMapping = false

    /// Leaves the memory mapped when this owner goes away, for when the kernel may still
    /// write into it (a receive that could not be confirmed cancelled).
    public mutating func keepMappedAfterDestruction() { keepsMapping = true }

    @inlinable @inline(__always)
    func write(bufferID: UInt16, at offset: Int) {
        // `offset` counts the buffers recycled since the last publish, at most `count`.
        io_uring_buf_ring_add(
            bufferRing, storage + Int(bufferID) &* stride, lengthField, bufferID, ringMask,
            Int32(truncatingIfNeeded: offset))
    }

    /// How many buffers the kernel can fill right now.
    public var available: Int { count - held - unpublished - reserved }

    /// What a receive produced (shared with the portable driver).
    public typealias Payload = ReceivedPayload

    /// Records that the kernel filled `bufferID`; the caller now holds it until `recycle`.
    @inlinable @inline(__always)
    public mutating func take(_ bufferID: UInt16) {
        heldCount &+= 1
        assert(verifyInvariants())
    }

    /// Records that the kernel filled `count` buffers (a batch of completions, counted once);
    /// the caller now holds them until each is recycled.
    @inlinable @inline(__always)
    public mutating func take(count: Int) {
        heldCount &+= count
        assert(verifyInvariants())
    }

    /// Checks a filled buffer against the kernel's numbers and lends its payload to `body` as a
    /// safe view.
    ///
    /// - Parameters:
    ///   - bufferID: from the CQE (`IORING_CQE_F_BUFFER`).
    ///   - result: the CQE's `res`: the datagram's length (its full length, with `MSG_TRUNC`,
    ///     even when only `bufferBytes` of it were copied).
    ///   - body: reads the payload; it must not keep it (the buffer is recycled afterwards).
    /// - Returns: what `body` returns, given `.datagram(length:)` and the bytes for a datagram
    ///   of at most `maxPayloadBytes`; `.truncated(fullLength:)` and no bytes for a longer one
    ///   (never relayed in part: its cut last line would carry a wrong value); `.malformed` and
    ///   no bytes for numbers that cannot come from a receive.
    @inlinable @inline(__always)
    public func withPayload<Result>(
        of bufferID: UInt16, result: Int32, _ body: (Payload, RawSpan) -> Result
    ) -> Result {
        // The kernel's own numbers are checked before any is used as a length.
        guard Int(bufferID) < count else {
            return body(.malformed, UnsafeRawBufferPointer(start: storage, count: 0).bytes)
        }
        let base = storage + Int(bufferID) &* stride  // below `count * stride`, mapped
        let length = Int(result)
        // One unsigned compare takes the common datagram: a negative result reads as too long.
        if UInt(bitPattern: length) <= UInt(bitPattern: maxPayloadBytes) {
            // The buffer is held by this worker until recycled, so the view cannot change under it.
            return body(.datagram(length: length), UnsafeRawBufferPointer(start: base, count: length).bytes)
        }
        guard length >= 0 else {
            return body(.malformed, UnsafeRawBufferPointer(start: storage, count: 0).bytes)
        }
        return body(.truncated(fullLength: length), UnsafeRawBufferPointer(start: base, count: 0).bytes)
    }

    /// Gives a held buffer back to the kernel (visible after the next `publish()`).
    ///
    /// - Precondition: `bufferID` was taken and not recycled since.
    @inlinable @inline(__always)
    public mutating func recycle(_ bufferID: UInt16) {
        write(bufferID: bufferID, at: unpublished)
        unpublished &+= 1
        heldCount &-= 1
        assert(verifyInvariants())
    }

    /// Gives back the buffers of the datagrams parked at positions `start..<end` of `queue`
    /// (wrapped), in order, as `recycle(_:)` would one by one (`cl_recycle_parked`: one call,
    /// not a ring entry's arithmetic in the relay loop for each).
    ///
    /// - Precondition: each of those buffers was taken and not recycled since.
    @inlinable @inline(__always)
    public mutating func recycle(parked queue: borrowing MaskedTable<ParkedReceive>, from start: Int, to end: Int) {
        let recycled = end &- start
        guard recycled > 0 else { return }
        // `ParkedReceive` is one `cl_completion`: the same memory, seen as the C type.
        queue.storage.withMemoryRebound(to: cl_completion.self, capacity: queue.count) { entries in
            cl_recycle_parked(
                bufferRing, entries, UInt(bitPattern: queue.mask), UInt(bitPattern: start), UInt(bitPattern: end),
                addresses, lengthField, UInt32(bitPattern: ringMask), UInt32(truncatingIfNeeded: unpublished))
        }
        unpublished &+= recycled
        heldCount &-= recycled
        assert(verifyInvariants())
    }

    /// Publishes every recycled buffer to the kernel with a single release store, and puts
    /// every reserved buffer back into circulation.
    @inlinable @inline(__always)
    public mutating func publish() { publish(circulating: count) }

    /// Publishes recycled buffers to the kernel with a single release store, first bringing
    /// the buffers in circulation toward `wanted`.
    ///
    /// Why fewer than all: the kernel fills buffers in ring order, so a worker that drains a
    /// backlog (each turn the kernel fills every buffer it has) cycles all of them through the
    /// CPU cache. With 256 buffers (the default since the adaptive wait aims at 128 datagrams)
    /// a saturated drain of 1 400-byte datagrams cost 4-13 % more CPU per line than with 128, in
    /// six of six comparisons; the relay keeps half of them out of circulation there
    /// (`IOUringDriver`).
    ///
    /// More buffers than wanted circulate: the surplus is withheld from the buffers recycled
    /// since the last publish, the last written first (a buffer with the kernel or held cannot
    /// be), so circulation shrinks as buffers come back, over one or more turns. Fewer: reserved
    /// buffers are written after the recycled ones and published with them, at once. When
    /// circulation is as wanted (every turn in a steady state) this costs one compare.
    ///
    /// - Precondition: `wanted` is 1 to `count`.
    @inlinable @inline(__always)
    public mutating func publish(circulating wanted: Int) {
        if count &- reserved != wanted { changeCirculation(toward: wanted) }
        guard unpublished > 0 else { return }
        io_uring_buf_ring_advance(bufferRing, Int32(unpublished))
        unpublished = 0
    }

    /// Withholds recycled, unpublished buffers while more than `wanted` circulate, or writes
    /// reserved ones after them while fewer do (see `publish(circulating:)`).
    @usableFromInline
    mutating func changeCirculation(toward wanted: Int) {
        precondition(wanted > 0 && wanted <= count, "1 to \(count) buffers circulate, not \(wanted)")
        while count - reserved > wanted && unpublished > 0 {
            // Written at `unpublished - 1` past the tail and not published: the kernel never
            // saw it, so taking it back is only lowering the count to publish.
            unpublished -= 1
            reserve[reserved] = cl_buf_ring_bid(bufferRing, UInt32(bitPattern: ringMask), UInt32(unpublished))
            reserved += 1
        }
        while count - reserved < wanted {
            // `reserved > 0` here: `wanted <= count`. The ring's free entries number at least
            // `held + unpublished + reserved`, so the entry written is not one the kernel has.
            reserved -= 1
            write(bufferID: reserve[reserved], at: unpublished)
            unpublished += 1
        }
        assert(verifyInvariants())
    }

    /// The reserved ids, for tests and diagnostics (allocates; never on the relay's path).
    var reservedBufferIDs: [UInt16] { (0..<reserved).map { reserve[$0] } }

    /// The ids recycled and not yet published, in ring order, for tests and diagnostics
    /// (allocates; never on the relay's path).
    var unpublishedBufferIDs: [UInt16] {
        (0..<unpublished).map { cl_buf_ring_bid(bufferRing, UInt32(bitPattern: ringMask), UInt32($0)) }
    }

    /// Checks the counts; used in `assert` after every change.
    public func verifyInvariants() -> Bool {
        held >= 0 && unpublished >= 0 && reserved >= 0 && held + unpublished + reserved <= count
    }
}
