import CLiburing
import Glibc

/// Fixed receive state for `recvmmsg(2)`: `count` buffers with their iovecs and message
/// headers, mapped once, so a batch of datagrams is taken in one system call with no
/// allocation. The portable driver's counterpart of `ProvidedBufferRing`.
///
/// Each buffer holds `payloadBytes + 1` bytes: a datagram that fills the extra byte is longer
/// than `payloadBytes` even where the kernel does not report `MSG_TRUNC`.
public struct DatagramBatch: ~Copyable {
    @usableFromInline let storage: UnsafeMutableRawPointer
    private let storageBytes: Int
    private let vectors: UnsafeMutablePointer<iovec>
    @usableFromInline let headers: UnsafeMutablePointer<cl_mmsghdr>
    /// Datagrams one `receive` can take.
    public let count: Int
    /// The largest datagram taken whole.
    public let payloadBytes: Int
    @usableFromInline let bufferBytes: Int
    /// How many datagrams the last `receive` took.
    public private(set) var received = 0

    /// Maps `count` buffers for datagrams of up to `payloadBytes`.
    public init(count: Int, payloadBytes: Int) throws(Errno) {
        precondition(count > 0 && payloadBytes > 0)
        let bufferBytes = payloadBytes + 1
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let storageBytes = (count * bufferBytes + page - 1) / page * page
        guard let memory = mmap(nil, storageBytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0),
              memory != MAP_FAILED else { throw Errno.current }
        storage = memory
        self.storageBytes = storageBytes
        self.count = count
        self.payloadBytes = payloadBytes
        self.bufferBytes = bufferBytes
        vectors = .allocate(capacity: count)
        headers = .allocate(capacity: count)
        for index in 0..<count {
            vectors[index] = iovec(iov_base: memory + index * bufferBytes, iov_len: bufferBytes)
            var header = cl_mmsghdr()
            header.msg_hdr.msg_iov = vectors + index
            header.msg_hdr.msg_iovlen = 1
            headers[index] = header
        }
    }

    deinit {
        munmap(storage, storageBytes)
        vectors.deallocate()
        headers.deallocate()
    }

    /// Takes up to `limit` (at most `count`) waiting datagrams from a socket's descriptor (see
    /// `PollSet.descriptor(of:)`) without waiting (`recvmmsg(2)` with `MSG_DONTWAIT`); by
    /// descriptor, so a caller that cannot borrow the socket while it mutates this batch can.
    ///
    /// - Returns: how many were taken; 0 when none is waiting.
    /// - Throws: `Errno` for a failure other than "nothing waiting" (`EAGAIN`).
    /// - Precondition: `descriptor` belongs to a UDP socket that outlives the call.
    public mutating func receive(descriptor: Int32, limit: Int) throws(Errno) -> Int {
        received = 0
        let wanted = UInt32(max(1, min(limit, count)))
        while true {
            let result = cl_recvmmsg(descriptor, headers, wanted, Int32(MSG_DONTWAIT))
            if result >= 0 {
                received = Int(result)
                return received
            }
            switch -result {
            case EINTR: continue
            case EAGAIN: return 0
            default: throw Errno(rawValue: -result)
            }
        }
    }

    /// Lends datagram `index` of the last `receive` to `body` as a safe view, checked against
    /// the kernel's numbers first.
    @inlinable @inline(__always)
    public func withDatagram<Result>(_ index: Int, _ body: (ReceivedPayload, RawSpan) -> Result) -> Result {
        let base = storage + index * bufferBytes
        let empty = UnsafeRawBufferPointer(start: base, count: 0).bytes
        guard index >= 0, index < received else { return body(.malformed, empty) }
        let header = headers[index]
        let length = Int(header.msg_len)
        if header.msg_hdr.msg_flags & Int32(MSG_TRUNC) != 0 || length > payloadBytes {
            return body(.truncated(fullLength: length), empty)
        }
        // The buffer is not written again until the next `receive`, which needs `inout` access.
        return body(.datagram(length: length), UnsafeRawBufferPointer(start: base, count: length).bytes)
    }
}
