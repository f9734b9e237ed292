/// What became of the lines a worker queued for one TCP backend (`TCPBackendLink`), for its
/// counters: every line queued ends exactly once as sent, dropped because the queue was full,
/// dropped at exit, or unconfirmed (written, never acknowledged, when its connection was let
/// go); `lostAtReset` is a part of `sent`, not another end.
///
/// A line counts as sent once the backend's kernel acknowledged its last byte (its `\n`), or
/// when its connection failed before that (then it is lost at reset too); its bytes are
/// counted with it, so a line cut by a failed connection and written again whole on the next
/// one counts once.
public struct StreamCounts: Sendable, Equatable {
    /// Lines (and their bytes) the backend's kernel acknowledged whole, and those lost at reset.
    public var sentLines: UInt64 = 0
    public var sentBytes: UInt64 = 0
    /// Writes (`sendmsg` calls or `send` SQEs) that the kernel took bytes from.
    public var writes: UInt64 = 0
    /// Lines (and bytes) dropped because the backend's queue (`--tcp-backend-queue`) had no
    /// room for their packet: the backend was connecting, down, or slower than the traffic.
    public var queueFullLines: UInt64 = 0
    public var queueFullBytes: UInt64 = 0
    /// Lines (and bytes) still queued, not written, when the worker exited.
    public var atExitLines: UInt64 = 0
    public var atExitBytes: UInt64 = 0
    /// Lines written whose bytes the backend's kernel had not acknowledged when their
    /// connection was let go alive (the worker's exit, a removed backend given up, an address
    /// change): the kernel may still deliver them, or not.
    public var unconfirmedLines: UInt64 = 0
    /// Of the lines sent, those whose bytes the backend's kernel had not acknowledged when the
    /// connection failed (reset, closed by the backend, or timed out): written, counted as
    /// sent, and lost.
    public var lostAtResetLines: UInt64 = 0
    public var lostAtResetBytes: UInt64 = 0
    /// Connections made.
    public var connects: UInt64 = 0
    /// Connections that failed: refused, unreachable, timed out while connecting, or reset
    /// (or closed by the backend) once made. Each is evidence for the health monitor.
    public var connectionFailures: UInt64 = 0
    /// Bytes the backend sent on its connections, read and thrown away (a StatsD backend sends
    /// none: a banner, an error message, another service on the port).
    public var receivedBytes: UInt64 = 0

    public init() {}

    static func - (lhs: StreamCounts, rhs: StreamCounts) -> StreamCounts {
        var difference = StreamCounts()
        difference.sentLines = lhs.sentLines &- rhs.sentLines
        difference.sentBytes = lhs.sentBytes &- rhs.sentBytes
        difference.writes = lhs.writes &- rhs.writes
        difference.queueFullLines = lhs.queueFullLines &- rhs.queueFullLines
        difference.queueFullBytes = lhs.queueFullBytes &- rhs.queueFullBytes
        difference.atExitLines = lhs.atExitLines &- rhs.atExitLines
        difference.atExitBytes = lhs.atExitBytes &- rhs.atExitBytes
        difference.unconfirmedLines = lhs.unconfirmedLines &- rhs.unconfirmedLines
        difference.lostAtResetLines = lhs.lostAtResetLines &- rhs.lostAtResetLines
        difference.lostAtResetBytes = lhs.lostAtResetBytes &- rhs.lostAtResetBytes
        difference.connects = lhs.connects &- rhs.connects
        difference.connectionFailures = lhs.connectionFailures &- rhs.connectionFailures
        difference.receivedBytes = lhs.receivedBytes &- rhs.receivedBytes
        return difference
    }
}
