import CLiburing
import Glibc

/// One connected UDP socket per backend, owned together and closed together.
///
/// Connected sockets let a `send` SQE carry no address and make the kernel report
/// `ECONNREFUSED` when a backend's host answers with ICMP port unreachable.
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
                for descriptor in opened { _ = close(descriptor) }
                throw error
            }
        }
        descriptors = opened
    }

    deinit { for descriptor in descriptors { _ = close(descriptor) } }

    /// Points backend `index`'s socket at a new address (after DNS re-resolution).
    ///
    /// The descriptor number stays the same, so sends already queued still name it: a new
    /// socket is connected and moved onto it with `dup2(2)`.
    public func reconnect(_ index: Int, to address: SocketAddress, sendBufferBytes: Int) throws(SystemCallError) {
        let replacement = try UDPSocket.connected(to: address, sendBufferBytes: sendBufferBytes).releaseDescriptor()
        defer { _ = close(replacement) }
        do throws(Errno) { _ = try systemCall { dup2(replacement, descriptors[index]) } } catch {
            throw SystemCallError("dup2", address.description, error)
        }
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
