import CLiburing
import Glibc

/// The bytes a worker holds for one TCP backend: packets queued to be written, and bytes
/// written on the connection that its kernel may not have had acknowledged yet, in one ring of
/// fixed capacity (`--tcp-backend-queue`), in stream order.
///
/// ```
///   start            written                 end           (stream offsets, UInt64)
///     │ retained:       │ queued: not yet      │
///     │ written, maybe  │ handed to a socket   │   free: capacity − (end − start)
///     │ unacknowledged  │                      │
/// ────┴─────────────────┴──────────────────────┴────────
/// ```
/// Offsets only grow (the owner keeps `written` and the release point); the byte at offset
/// `o` lives at `o % capacity`. Nothing is allocated after `init`: the storage is one `malloc`
/// of `capacity` bytes, whose untouched pages cost no memory.
public struct StreamSendQueue: ~Copyable {
    private let storage: UnsafeMutableRawPointer
    /// The most bytes held at once.
    public let capacity: Int
    /// The oldest byte still held.
    public private(set) var start: UInt64 = 0
    /// One past the newest byte queued.
    public private(set) var end: UInt64 = 0
    /// Set when a send on the ring may still read the storage at destruction.
    private var keepAllocated = false

    /// An empty queue of `capacity` bytes.
    ///
    /// - Precondition: `capacity` > 0.
    public init(capacity: Int) {
        precondition(capacity > 0)
        self.capacity = capacity
        storage = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 64)
    }

    deinit { if !keepAllocated { storage.deallocate() } }

    /// Leaves the storage allocated when the queue goes away: a `send` SQE whose completion
    /// never came (a ring that failed or a stop out of time) may still read it.
    public mutating func keepAllocatedAfterDestruction() { keepAllocated = true }

    /// Bytes that can still be queued.
    @inline(__always)
    public var room: Int { capacity - Int(end &- start) }

    /// Queues `slot`'s packet, followed by `\n` when it does not end with one (a packet's
    /// last line carries none when it filled the packet alone), so every line on the stream
    /// ends with a newline.
    ///
    /// - Returns: the bytes queued, or `nil` (nothing queued) when they do not fit in `room`.
    @inline(__always)
    public mutating func append(slot: Int, of pool: borrowing SendBufferPool) -> Int? {
        let bytes = pool.unsafeBytes(ofSlot: slot)
        guard let last = bytes.last else { return 0 }
        let total = bytes.count + (last == UInt8(ascii: "\n") ? 0 : 1)
        guard total <= room else { return nil }
        copy(bytes)
        if total > bytes.count {
            storage.storeBytes(of: UInt8(ascii: "\n"), toByteOffset: position(end), as: UInt8.self)
            end &+= 1
        }
        return total
    }

    /// Copies `bytes` at `end`, wrapping.
    private mutating func copy(_ bytes: UnsafeRawBufferPointer) {
        guard let base = bytes.baseAddress else { return }
        let at = position(end)
        let first = min(bytes.count, capacity - at)
        (storage + at).copyMemory(from: base, byteCount: first)
        if first < bytes.count { storage.copyMemory(from: base + first, byteCount: bytes.count - first) }
        end &+= UInt64(bytes.count)
    }

    /// Forgets the bytes before `offset` (acknowledged, or given up).
    ///
    /// - Precondition: `start` ≤ `offset` ≤ `end`.
    public mutating func release(upTo offset: UInt64) {
        precondition(offset >= start && offset <= end, "released outside the queue")
        start = offset
    }

    /// Forgets the bytes from `offset` on (queued packets dropped at exit).
    ///
    /// - Precondition: `start` ≤ `offset` ≤ `end`.
    public mutating func truncate(at offset: UInt64) {
        precondition(offset >= start && offset <= end, "truncated outside the queue")
        end = offset
    }

    /// The newlines in `from..<to` (the lines those bytes end), and the offset just past the
    /// last of them (`nil` when there is none).
    ///
    /// - Precondition: `start` ≤ `from` ≤ `to` ≤ `end`.
    public func newlines(from: UInt64, to: UInt64) -> (count: Int, pastLast: UInt64?) {
        precondition(from >= start && from <= to && to <= end, "counted outside the queue")
        var count = 0
        var pastLast: UInt64?
        var offset = from
        while offset < to {
            let at = position(offset)
            let length = min(Int(to &- offset), capacity - at)
            let span = UnsafeRawBufferPointer(start: storage + at, count: length)
            for index in 0..<length where span[index] == UInt8(ascii: "\n") {
                count += 1
                pastLast = offset &+ UInt64(index) &+ 1
            }
            offset &+= UInt64(length)
        }
        return (count, pastLast)
    }

    /// The offset just past the first `\n` in `from..<to`, or `nil` when there is none.
    ///
    /// - Precondition: `start` ≤ `from` ≤ `to` ≤ `end`.
    public func firstNewline(from: UInt64, to: UInt64) -> UInt64? {
        precondition(from >= start && from <= to && to <= end, "searched outside the queue")
        var offset = from
        while offset < to {
            if storage.load(fromByteOffset: position(offset), as: UInt8.self) == UInt8(ascii: "\n") { return offset &+ 1 }
            offset &+= 1
        }
        return nil
    }

    /// Writes the bytes from `offset` to `limit` (`end` when `nil`; both pieces when they
    /// wrap) to `socket` without waiting (`sendmsg(2)` with `MSG_DONTWAIT | MSG_NOSIGNAL`).
    ///
    /// - Returns: the bytes the kernel accepted (possibly fewer: a partial write), or
    ///   `-errno` (`-EAGAIN` when its send buffer is full).
    /// - Precondition: `start` ≤ `offset` < `limit` ≤ `end`.
    public func write(from offset: UInt64, upTo limit: UInt64? = nil, to socket: borrowing TCPBackendSocket) -> Int {
        let stop = limit ?? end
        precondition(offset >= start && offset < stop && stop <= end, "written outside the queue")
        let at = position(offset)
        let length = Int(stop &- offset)
        let first = min(length, capacity - at)
        var pieces = (
            iovec(iov_base: storage + at, iov_len: first),
            iovec(iov_base: storage, iov_len: length - first))
        return withUnsafeMutablePointer(to: &pieces) { pair in
            pair.withMemoryRebound(to: iovec.self, capacity: 2) { vector in
                var message = msghdr()
                message.msg_iov = vector
                message.msg_iovlen = first < length ? 2 : 1
                while true {
                    let sent = sendmsg(socket.descriptor, &message, Int32(MSG_DONTWAIT) | Int32(MSG_NOSIGNAL))
                    if sent >= 0 { return sent }
                    if errno != EINTR { return -Int(errno) }
                }
            }
        }
    }

    /// The bytes from `offset` up to `end` or the end of the storage, whichever comes first,
    /// for a `send` SQE.
    ///
    /// - Warning: the memory stays valid for the queue's lifetime; bytes at or past `offset`
    ///   are never overwritten before `release(upTo:)` passes them, so keep them until the
    ///   send's CQE arrives.
    package func unsafeContiguousBytes(from offset: UInt64, limit: Int) -> UnsafeRawBufferPointer {
        let at = position(offset)
        let length = min(Int(end &- offset), capacity - at, limit)
        return UnsafeRawBufferPointer(start: storage + at, count: length)
    }

    @inline(__always)
    private func position(_ offset: UInt64) -> Int { Int(offset % UInt64(capacity)) }
}
