import CBenchShims
import Glibc

/// Preallocated `recvmmsg(2)` state: `count` buffers of `size` bytes with their iovecs and message headers.
///
/// One batch belongs to one receiving thread; nothing is allocated per receive.
public final class ReceiveBatch {
    /// Datagrams per `recvmmsg(2)` call.
    public let count: Int
    /// Bytes per datagram buffer.
    public let size: Int
    /// `count * size` bytes of datagram buffers.
    private let storage: UnsafeMutableRawPointer
    /// One iovec per buffer.
    private let vectors: UnsafeMutablePointer<iovec>
    /// One message header per buffer.
    private let headers: UnsafeMutablePointer<cbench_mmsghdr>
    /// Room for the arrival timestamp of each datagram, or `nil` when none are asked for.
    private let control: UnsafeMutableRawPointer?
    /// Control bytes per datagram: a `cmsghdr` and a `timespec`, aligned.
    private static let controlBytes = 64

    /// Allocates `count` buffers of `size` bytes, and room for each datagram's kernel arrival
    /// timestamp if `timestamps` (the socket needs `enableArrivalTimestamps` too).
    public init(count: Int, size: Int, timestamps: Bool = false) {
        precondition(count > 0 && size > 0)
        self.count = count
        self.size = size
        storage = .allocate(byteCount: count * size, alignment: 64)
        storage.initializeMemory(as: UInt8.self, repeating: 0, count: count * size)
        vectors = .allocate(capacity: count)
        headers = .allocate(capacity: count)
        control = timestamps ? .allocate(byteCount: count * Self.controlBytes, alignment: 16) : nil
        for index in 0..<count {
            vectors[index] = iovec(iov_base: storage + index * size, iov_len: size)
            var header = cbench_mmsghdr()
            header.msg_hdr.msg_iov = vectors + index
            header.msg_hdr.msg_iovlen = 1
            headers[index] = header
        }
    }

    deinit {
        control?.deallocate()
        headers.deallocate()
        vectors.deallocate()
        storage.deallocate()
    }

    /// Blocks for at least one datagram, then takes whatever else is queued, up to `count`
    /// (`MSG_WAITFORONE`); returns the number received, or the negated `errno`.
    @inline(__always)
    public func receive(from fd: Int32) -> Int {
        if let control {
            // The kernel shrinks msg_controllen to what it wrote; give every header its full room again.
            for index in 0..<count {
                headers[index].msg_hdr.msg_control = control + index * Self.controlBytes
                headers[index].msg_hdr.msg_controllen = Self.controlBytes
            }
        }
        let received = cbench_recvmmsg(fd, headers, UInt32(count), Int32(MSG_WAITFORONE), nil)
        return received < 0 ? -Int(errno) : Int(received)
    }

    /// Bytes of datagram `index` of the last receive.
    @inline(__always)
    public func length(at index: Int) -> Int {
        Int(headers[index].msg_len)
    }

    /// Whether datagram `index` of the last receive was longer than its buffer.
    @inline(__always)
    public func isTruncated(at index: Int) -> Bool {
        headers[index].msg_hdr.msg_flags & Int32(MSG_TRUNC) != 0
    }

    /// When the kernel queued datagram `index` of the last receive on the socket, in
    /// `CLOCK_REALTIME` nanoseconds; 0 without timestamps.
    @inline(__always)
    public func arrivalTimestamp(at index: Int) -> UInt64 {
        guard control != nil else { return 0 }
        return UInt64(cbench_arrival_timestamp(&headers[index].msg_hdr))
    }

    /// Asks the kernel to timestamp every datagram queued on `fd` (`SO_TIMESTAMPNS`).
    public static func enableArrivalTimestamps(on fd: Int32) throws(BenchError) {
        guard cbench_enable_arrival_timestamps(fd) == 0 else { throw .system("setsockopt(SO_TIMESTAMPNS)", code: errno) }
    }

    /// The payload of datagram `index` of the last receive, valid until the next receive.
    @inline(__always)
    public func payload(at index: Int) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: storage + index * size, count: min(length(at: index), size))
    }
}
