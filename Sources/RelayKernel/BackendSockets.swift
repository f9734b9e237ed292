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
    /// socket is connected and moved onto it with `dup2(2)`. The old socket's error queue goes
    /// with it, so it is drained first and its report returned.
    /// - Returns: what the old socket's error queue held (count it like `takeErrors(_:)`).
    @discardableResult
    public func reconnect(_ index: Int, to address: SocketAddress, sendBufferBytes: Int) throws(SystemCallError) -> SocketErrorReport {
        let replacement = try UDPSocket.connected(to: address, sendBufferBytes: sendBufferBytes).releaseDescriptor()
        defer { _ = close(replacement) }  // not retried: see `systemCall`
        let report = takeErrors(index)
        do throws(Errno) { _ = try systemCall { dup2(replacement, descriptors[index]) } } catch {
            throw SystemCallError("dup2", address.description, error)
        }
        return report
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
}

extension UDPSocket {
    /// Gives up ownership of the descriptor to another owner, which must close it.
    consuming func releaseDescriptor() -> Int32 {
        let descriptor = self.descriptor
        discard self
        return descriptor
    }
}
