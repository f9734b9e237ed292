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
}
