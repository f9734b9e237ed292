import CLiburing
import Glibc

extension BackendSockets {
    /// The bytes charged to backend `index`'s send buffer and not yet freed (`SIOCOUTQ`, the
    /// socket's write allocation: what it sent that still waits below it, in a queueing
    /// discipline or a device queue, counted at the kernel's size for each datagram).
    /// `nil` if the kernel cannot say.
    ///
    /// Only the owner sends on the socket, so between two sends of its own this can only fall.
    public func sendQueueBytes(_ index: Int) -> Int? {
        let bytes = cl_socket_send_queue_bytes(descriptors[index])
        return bytes < 0 ? nil : Int(bytes)
    }

    /// Takes the error pending on backend `index`'s socket (`SO_ERROR`), if any: the refusal an
    /// ICMP error left there, which would fail the socket's next send untransmitted. The ICMP
    /// error itself stays in the socket's error queue (`IP_RECVERR`), where the delivery ledger
    /// reads it and counts the packet it quotes; only the pending errno goes.
    ///
    /// - Returns: the errno taken (0: none was pending), or `nil` if the kernel cannot say.
    @discardableResult
    public func takePendingError(_ index: Int) -> Int32? {
        var value: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        let read = try? systemCall { getsockopt(descriptors[index], SOL_SOCKET, SO_ERROR, &value, &length) }
        return read == nil ? nil : value
    }

    /// The most backend `index`'s socket may have charged before a send must wait for room:
    /// `SO_SNDBUF` as read back (the kernel's limit, twice what was asked for). `nil` if the
    /// kernel cannot say.
    public func sendBufferLimit(_ index: Int) -> Int? {
        var value: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        let read = try? systemCall { getsockopt(descriptors[index], SOL_SOCKET, SO_SNDBUF, &value, &length) }
        return read == nil ? nil : Int(value)
    }
}
