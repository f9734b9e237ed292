import CLiburing
import Glibc

/// One connected UDP socket per backend, owned together and closed together.
///
/// Connected sockets let a `send` SQE carry no address, and their error queues
/// (`IP_RECVERR`/`IPV6_RECVERR`) report each datagram a backend's host refused with ICMP port
/// unreachable: `takeErrors(_:)` drains one backend's queue.
public struct BackendSockets: ~Copyable {
    /// The descriptors, in backend order.
    let descriptors: [Int32]

    /// Connects one socket to each address, in order.
    ///
    /// - Parameter sendBufferBytes: `SO_SNDBUF` for each (forced where permitted).
    public init(connecting addresses: [SocketAddress], sendBufferBytes: Int) throws(SystemCallError) {
        var opened: [Int32] = []
        for address in addresses {
            do {
                opened.append(try UDPSocket.connected(to: address, sendBufferBytes: sendBufferBytes).releaseDescriptor())
            } catch {
                for descriptor in opened { _ = close(descriptor) }  // not retried: see `systemCall`
                throw error
            }
        }
        descriptors = opened
    }

    // close(2) is not retried: see `systemCall`.
    deinit { for descriptor in descriptors { _ = close(descriptor) } }

    /// Points backend `index`'s socket at a new address (after DNS re-resolution).
    ///
    /// The descriptor number stays the same, so sends already queued still name it: a new
    /// socket is connected and moved onto it with `dup2(2)`. The old socket lives on in
    /// `retiring` (a duplicate descriptor), so refusals for packets it already sent still reach
    /// its error queue and are counted.
    public func reconnect(
        _ index: Int, to address: SocketAddress, sendBufferBytes: Int, retiring: inout RetiringSockets
    ) throws(SystemCallError) {
        let replacement = try UDPSocket.connected(to: address, sendBufferBytes: sendBufferBytes).releaseDescriptor()
        defer { _ = close(replacement) }  // not retried: see `systemCall`
        let old = try Self.duplicate(descriptors[index], address)
        do throws(Errno) { _ = try systemCall { dup2(replacement, descriptors[index]) } } catch {
            _ = close(old)
            throw SystemCallError("dup2", address.description, error)
        }
        retiring.adopt(old)
    }

    /// Drains backend `index`'s error queue and counts what it held: each `refused` or
    /// `unreachable` entry is one datagram the kernel accepted (its send succeeded) that never
    /// reached the backend. Never blocks; at most `limit` entries are taken.
    ///
    /// Drain a backend that had sends often enough that fewer than ~150 refusals can pile up
    /// (the queue lives in the socket's receive buffer and drops entries beyond it); draining
    /// also clears the pending error that would otherwise fail the next send. A poll for
    /// `POLLERR` on the socket fires when an entry arrives. See `SocketErrorReport`.
    public func takeErrors(_ index: Int, limit: Int = SocketErrorReport.defaultLimit) -> SocketErrorReport {
        SocketErrorReport.drain(descriptors[index], limit: limit)
    }

    /// How many backends have a socket.
    public var count: Int { descriptors.count }

    /// The sockets for a new backend pool, after a membership change: position `i` shares the
    /// socket of old backend `keeping[i]` (a duplicate descriptor of the same socket, so its
    /// error queue carries over) or, when `nil`, a new socket connected to `addresses[i]`.
    /// The old sockets not kept are added to `retiring` (as duplicates, in old order), for
    /// their error queues to be read until their packets are accounted for.
    ///
    /// Nothing changes in `self`; dropping it afterwards closes only its own descriptors.
    /// - Throws: `SystemCallError` from a `dup` or a connect; nothing is left open or added then.
    public func rebuilt(
        keeping: [Int?], addresses: [SocketAddress], sendBufferBytes: Int, retiring: inout RetiringSockets
    ) throws(SystemCallError) -> BackendSockets {
        precondition(keeping.count == addresses.count)
        var opened: [Int32] = []
        var released: [Int32] = []
        func closeAll() { for descriptor in opened + released { _ = close(descriptor) } }
        do throws(SystemCallError) {
            for (index, old) in keeping.enumerated() {
                if let old {
                    opened.append(try Self.duplicate(descriptors[old], addresses[index]))
                } else {
                    opened.append(try UDPSocket.connected(to: addresses[index], sendBufferBytes: sendBufferBytes).releaseDescriptor())
                }
            }
            let kept = Set(keeping.compactMap { $0 })
            for old in descriptors.indices where !kept.contains(old) {
                released.append(try Self.duplicate(descriptors[old], nil))
            }
        } catch {
            closeAll()
            throw error
        }
        for descriptor in released { retiring.adopt(descriptor) }
        return BackendSockets(owning: opened)
    }

    private init(owning descriptors: [Int32]) { self.descriptors = descriptors }

    private static func duplicate(_ descriptor: Int32, _ address: SocketAddress?) throws(SystemCallError) -> Int32 {
        do throws(Errno) { return try systemCall { fcntl(descriptor, F_DUPFD_CLOEXEC, 0) } } catch {
            throw SystemCallError("dup", address?.description ?? "backend socket", error)
        }
    }
}

/// Sockets of backends that left the pool, kept open only so their error queues can still be
/// read (`takeErrors`) until every packet sent on them is accounted for, then closed.
public struct RetiringSockets: ~Copyable {
    private var descriptors: [Int32] = []

    /// None yet.
    public init() {}

    // close(2) is not retried: see `systemCall`.
    deinit { for descriptor in descriptors { _ = close(descriptor) } }

    /// Takes ownership of a descriptor (from `BackendSockets.rebuilt`).
    mutating func adopt(_ descriptor: Int32) { descriptors.append(descriptor) }

    /// How many sockets are retiring.
    public var count: Int { descriptors.count }

    /// Drains socket `index`'s error queue (see `BackendSockets.takeErrors`).
    public func takeErrors(_ index: Int, limit: Int = SocketErrorReport.defaultLimit) -> SocketErrorReport {
        SocketErrorReport.drain(descriptors[index], limit: limit)
    }

    /// Closes socket `index`; later ones move down by one.
    public mutating func closeSocket(at index: Int) {
        _ = close(descriptors.remove(at: index))  // not retried: see `systemCall`
    }
}

extension UDPSocket {
    /// Gives up ownership of the descriptor to another owner, which must close it.
    consuming func releaseDescriptor() -> Int32 {
        let descriptor = self.descriptor
        discard self
        return descriptor
    }
}
