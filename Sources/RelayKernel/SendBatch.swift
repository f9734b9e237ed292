import CLiburing
import Glibc

/// Packets from a `SendBufferPool` sent with `sendmmsg(2)`, one call per backend socket: the
/// portable driver's counterpart of `send` SQEs.
///
/// The backend sockets are blocking, so a full socket buffer makes the call wait for room, as
/// the uring driver's sends do, rather than fail with `EAGAIN`.
public struct SendBatch: ~Copyable {
    private let vectors: UnsafeMutablePointer<iovec>
    private let headers: UnsafeMutablePointer<cl_mmsghdr>
    private var slots: [Int32]
    private var backends: [Int32]
    private var order: [Int32]
    private var results: [Int32]
    /// Packets one batch holds.
    public let capacity: Int
    /// Packets added since the last `removeAll`.
    public private(set) var count = 0

    /// Room for `capacity` packets.
    public init(capacity: Int) {
        precondition(capacity > 0)
        self.capacity = capacity
        vectors = .allocate(capacity: capacity)
        headers = .allocate(capacity: capacity)
        slots = Array(repeating: 0, count: capacity)
        backends = Array(repeating: 0, count: capacity)
        order = Array(repeating: 0, count: capacity)
        results = Array(repeating: 0, count: capacity)
    }

    deinit {
        vectors.deallocate()
        headers.deallocate()
    }

    /// Whether the batch is full (send it before adding more).
    public var isFull: Bool { count == capacity }

    /// Adds a packed slot bound for `backend`.
    ///
    /// - Precondition: not full.
    public mutating func append(slot: Int, backend: Int) {
        precondition(count < capacity, "send batch is full")
        slots[count] = Int32(slot)
        backends[count] = Int32(backend)
        count += 1
    }

    /// The slot of packet `index` (in the order added).
    public func slot(_ index: Int) -> Int { Int(slots[index]) }

    /// The result of packet `index` after `send`: bytes sent or `-errno`, as a CQE's `res`.
    public func result(_ index: Int) -> Int32 { results[index] }

    /// Forgets every packet (after their results have been taken).
    public mutating func removeAll() { count = 0 }

    /// Sends every added packet, grouped by backend (each backend's packets in the order they
    /// were added), and records each one's `result`.
    public mutating func send(from pool: borrowing SendBufferPool, to sockets: borrowing BackendSockets) {
        guard count > 0 else { return }
        // A stable grouping by backend: insertion sort is fine for a batch this size.
        for index in 0..<count { order[index] = Int32(index) }
        if count > 1 {
            for index in 1..<count {
                let moving = order[index]
                var position = index
                while position > 0 && backends[Int(order[position - 1])] > backends[Int(moving)] {
                    order[position] = order[position - 1]
                    position -= 1
                }
                order[position] = moving
            }
        }
        var start = 0
        while start < count {
            let backend = Int(backends[Int(order[start])])
            var end = start
            while end < count && Int(backends[Int(order[end])]) == backend {
                let entry = Int(order[end])
                let bytes = pool.unsafeBytes(ofSlot: Int(slots[entry]))
                vectors[end] = iovec(iov_base: UnsafeMutableRawPointer(mutating: bytes.baseAddress), iov_len: bytes.count)
                var header = cl_mmsghdr()
                header.msg_hdr.msg_iov = vectors + end
                header.msg_hdr.msg_iovlen = 1
                headers[end] = header
                end += 1
            }
            sendGroup(start..<end, descriptor: sockets.descriptors[backend])
            start = end
        }
    }

    /// One backend's packets: `sendmmsg` sends a prefix and reports an error only for the
    /// first packet it could not send, so the call is repeated past each failure.
    private mutating func sendGroup(_ range: Range<Int>, descriptor: Int32) {
        var next = range.lowerBound
        while next < range.upperBound {
            let result = cl_sendmmsg(descriptor, headers + next, UInt32(range.upperBound - next), 0)
            if result > 0 {
                for index in next..<next + Int(result) {
                    results[Int(order[index])] = Int32(clamping: headers[index].msg_len)
                }
                next += Int(result)
            } else if result == -EINTR {
                continue
            } else {
                results[Int(order[next])] = result == 0 ? -EIO : result
                next += 1
            }
        }
    }
}
