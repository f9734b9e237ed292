import RelayKernel

/// What a worker is told while it runs, through its `WorkerControl`: applied at a turn
/// boundary, in the order sent, never inside a datagram.
public enum WorkerCommand: Sendable, Equatable {
    /// Drain, flush and stop (see `RelayCore.Phase`).
    case stop
    /// New `--packet-len` and `--flush-interval`. The flush interval holds from this turn on
    /// (for the batches open too); a new packet length closes every open batch (they go out at
    /// the old length) and packs every datagram relayed from this turn on at the new one.
    case applySettings(packetBytes: Int, flushIntervalNanoseconds: UInt64)
    /// Take the backend pool `RoutingState` publishes now: its health view at once, a
    /// membership change after the old pool's batches are sent. Workers also look at the
    /// published pool every turn; this command lets a sender await that every worker took it.
    case followPool
    /// Receive on this socket from now on, as listener `id` (`udp:ADDRESS:PORT` in the counts):
    /// the sender bound it, `SO_REUSEPORT`, one per worker, so a bind error refused the reload
    /// before any worker was told. Applied by the driver, not the core.
    case addListener(id: UInt32, socket: SocketHandOver)
    /// Stop taking datagrams on listener `id`: it is connected to itself (takes nothing new),
    /// what it holds is received and relayed, then it closes. The worker answers the receipt
    /// once it has closed. Applied by the driver, not the core.
    case removeListener(id: UInt32)
    /// Accept TCP ingest connections on this listening socket from now on, as listener `id`
    /// (`tcp:ADDRESS:PORT` in the counts): the sender bound it, one per worker. Applied by the
    /// driver, not the core.
    case addTCPListener(id: UInt32, socket: TCPListenerHandOver)
    /// Close TCP listener `id`'s listening socket: no new connection is accepted on it. Its
    /// open connections stay open until their clients close them, they idle out, or the relay
    /// stops. Applied by the driver, not the core.
    case removeTCPListener(id: UInt32)
}
