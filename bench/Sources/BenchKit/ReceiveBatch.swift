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

    /// Allocates `count` buffers of `size` bytes.
    public init(count: Int, size: Int) {
        precondition(count > 0 && size > 0)
        self.count = count
        self.size = size
        storage = .allocate(byteCount: count * size, alignment: 64)
        storage.initializeMemory(as: UInt8.self, repeating: 0, count: count * size)
        vectors = .allocate(capacity: count)
        headers = .allocate(capacity: count)
        for index in 0..<count {
            vectors[index] = iovec(iov_base: storage + index * size, iov_len: size)
            var header = cbench_mmsghdr()
            header.msg_hdr.msg_iov = vectors + index
            header.msg_hdr.msg_iovlen = 1
            headers[index] = header
        }
    }

    deinit {
        headers.deallocate()
        vectors.deallocate()
        storage.deallocate()
    }

    /// Blocks for at least one datagram, then takes whatever else is queued, up to `count`
    /// (`MSG_WAITFORONE`); returns the number received, or the negated `errno`.
    @inline(__always)
    public func receive(from fd: Int32) -> Int {
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

    /// The payload of datagram `index` of the last receive, valid until the next receive.
    @inline(__always)
    public func payload(at index: Int) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: storage + index * size, count: min(length(at: index), size))
    }
}
