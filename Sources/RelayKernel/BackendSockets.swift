import CLiburing
import Glibc

/// One connected UDP socket per backend, owned together and closed together.
///
/// Connected sockets let a `send` SQE carry no address, and their error queues
/// (`IP_RECVERR`/`IPV6_RECVERR`) report each datagram a backend's host refused with ICMP port
/// unreachable: `takeErrors(_:)` drains one backend's queue.
public struct BackendSockets: ~Copyable {
    /// The descriptors, in backend order.
    private(set) var descriptors: [Int32]

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

    /// Points backend `index` at a new address (after DNS re-resolution): a new socket,
    /// connected to `address`, takes its place; the old one moves to `retiring` with its
    /// descriptor number.
    ///
    /// A send prepared before the move names the old descriptor and goes out on the old
    /// socket, whenever the kernel issues it; refusals for it reach the old socket's error
    /// queue. Keep the retired socket open until every send prepared for it has completed.
    public mutating func reconnect(
        _ index: Int, to address: SocketAddress, sendBufferBytes: Int, retiring: inout RetiringSockets
    ) throws(SystemCallError) {
        let replacement = try UDPSocket.connected(to: address, sendBufferBytes: sendBufferBytes).releaseDescriptor()
        retiring.adopt(descriptors[index])
        descriptors[index] = replacement
    }

    /// Drains backend `index`'s error queue, hands each entry to `sink` and counts them: each
    /// `refused` or `unreachable` entry is one datagram the kernel accepted (its send
    /// succeeded) that never reached the backend, or the echo of one whose send failed (a
    /// local firewall's reject). Never blocks; at most `limit` entries are taken.
    ///
    /// Drain a backend that had sends often enough that fewer than ~150 refusals can pile up
    /// (the queue lives in the socket's receive buffer and drops entries beyond it); draining
    /// also clears the pending error that would otherwise fail the next send. A poll for
    /// `POLLERR` on the socket fires when an entry arrives. See `SocketErrorReport`.
    public func takeErrors<Sink: SocketErrorSink>(
        _ index: Int, limit: Int = SocketErrorReport.defaultLimit, into sink: inout Sink
    ) -> SocketErrorReport {
        SocketErrorReport.drain(descriptors[index], limit: limit, into: &sink)
    }

    /// Drains backend `index`'s error queue and only counts what it held.
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

/// Sockets of backends that left the pool or moved, kept open only so their error queues can
/// still be read (`takeErrors`) until every packet sent on them is accounted for, then closed.
public struct RetiringSockets: ~Copyable {
    private var descriptors: [Int32] = []

    /// None yet.
    public init() {}

    // close(2) is not retried: see `systemCall`.
    deinit { for descriptor in descriptors { _ = close(descriptor) } }

    /// Takes ownership of a descriptor (from `BackendSockets.rebuilt` or `reconnect`).
    mutating func adopt(_ descriptor: Int32) { descriptors.append(descriptor) }

    /// How many sockets are retiring.
    public var count: Int { descriptors.count }

    /// Drains socket `index`'s error queue into `sink` (see `BackendSockets.takeErrors`).
    public func takeErrors<Sink: SocketErrorSink>(
        _ index: Int, limit: Int = SocketErrorReport.defaultLimit, into sink: inout Sink
    ) -> SocketErrorReport {
        SocketErrorReport.drain(descriptors[index], limit: limit, into: &sink)
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
