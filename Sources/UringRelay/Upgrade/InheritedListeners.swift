import RelayKernel

/// The listening sockets a relay received from the one it takes over: per listener, its bound
/// address and one socket per worker, checked (`UDPSocket.listenerMismatch`).
public struct InheritedListeners: Sendable {
    /// The bound addresses, in listener-id order.
    public var addresses: [SocketAddress]
    /// Per listener (in `addresses` order), one socket per worker, in worker order.
    public var sockets: [[SocketBox]]
    /// Whether another process keeps holding the sockets after the start (systemd, for socket
    /// activation): the relay's stop then always closes them as they are, so what they hold
    /// waits there for the next start (`ListenerRegistry.listenersShared`).
    public var heldElsewhere = false
    /// Per listener and worker, the kernel drop counter at which the previous relay stopped
    /// counting that socket's drops (`sockets … drops=`, protocol version 2), or `nil`.
    public var dropBaselines: [[UInt32?]]?
    /// The TCP ingest listeners' bound addresses, in the configuration's order
    /// (`RelayConfiguration.tcpListenAddresses`); empty when none came (none configured, or a
    /// predecessor of protocol version 2 or older, which hands over no TCP listener).
    public var tcpAddresses: [SocketAddress] = []
    /// Per TCP listener (in `tcpAddresses` order), one listening socket per worker, in worker
    /// order (the same socket for every worker when systemd passed one for the listener).
    public var tcpSockets: [[SocketBox]] = []

    /// Sockets of `addresses.count` listeners, `sockets[listener][worker]`.
    ///
    /// - Precondition: one entry of `sockets` per address, each with the same number of sockets.
    public init(addresses: [SocketAddress], sockets: [[SocketBox]]) {
        precondition(addresses.count == sockets.count, "one socket list per listener")
        precondition(Set(sockets.map(\.count)).count <= 1, "the same number of sockets for every listener")
        self.addresses = addresses
        self.sockets = sockets
    }

    /// How many workers the sockets are for.
    public var workers: Int { sockets.first?.count ?? tcpSockets.first?.count ?? 0 }

    /// Per listener, whether every worker reads the one socket (a Unix datagram listener
    /// always: its duplicates came over as separate descriptors of one socket).
    public var sharedByWorkers: [Bool] {
        zip(addresses, sockets).map { address, list in
            address.family == .unix || (list.count > 1 && list.allSatisfy { $0 === list[0] })
        }
    }

    /// Worker `worker`'s socket of each listener, in listener-id order.
    public func sockets(worker: Int) -> [SocketBox] { sockets.map { $0[worker] } }

    /// Worker `worker`'s listening socket of each TCP listener, or `nil` when none came.
    public func tcpSockets(worker: Int) -> [SocketBox]? { tcpSockets.isEmpty ? nil : tcpSockets.map { $0[worker] } }
}
