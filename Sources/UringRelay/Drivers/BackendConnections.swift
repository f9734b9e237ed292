import RelayKernel

/// A worker's connected sockets to the backends of the pool in force, kept in step with the
/// pool: a backend whose address moved (DNS) is reconnected in place, and a membership change
/// gets a new set of sockets once the core says the old pool's sends are all done. Shared by
/// both drivers.
struct BackendConnections: ~Copyable {
    /// One connected socket per backend of the core's pool, in pool order.
    private(set) var sockets: BackendSockets
    private var addresses: [SocketAddress]
    private var generation: UInt64

    /// `SO_SNDBUF` for backend sockets: room for bursts without `EAGAIN`.
    static let sendBufferBytes = 4 << 20

    /// Connects to `pool`'s backends.
    init(pool: BackendPool) throws(SystemCallError) {
        sockets = try BackendSockets(connecting: pool.addresses, sendBufferBytes: Self.sendBufferBytes)
        addresses = pool.addresses
        generation = pool.generation
    }

    /// Follows the core's pool after its turn: completes a waiting membership change when no
    /// send is in flight, else reconnects backends whose address moved. A failed reconnect
    /// keeps the old address and is tried again next turn; a failed membership change keeps
    /// the old pool (the core counts it).
    mutating func follow(_ core: inout RelayCore, sendsInFlight: Int) {
        if core.poolChangeReady(sendsInFlight: sendsInFlight), let next = core.pendingPool {
            do {
                let replacement = try BackendSockets(connecting: next.addresses, sendBufferBytes: Self.sendBufferBytes)
                try core.completePoolChange()
                sockets = replacement
                addresses = next.addresses
                generation = core.pool.generation
            } catch {
                core.abandonPoolChange()
            }
            return
        }
        guard core.pendingPool == nil, core.pool.generation != generation else { return }
        let wanted = core.pool.addresses
        var allMoved = true
        for backend in wanted.indices where wanted[backend] != addresses[backend] {
            if (try? sockets.reconnect(backend, to: wanted[backend], sendBufferBytes: Self.sendBufferBytes)) != nil {
                addresses[backend] = wanted[backend]
            } else {
                allMoved = false
            }
        }
        if allMoved { generation = core.pool.generation }
    }
}
