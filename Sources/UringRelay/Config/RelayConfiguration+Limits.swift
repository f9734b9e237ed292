import RelayKernel

/// The range of every duration and size setting, in one place: `validate()` checks them and the
/// command line parses each option against its own, so a value out of range is refused with the
/// limit named, whichever way it came in.
extension RelayConfiguration {
    /// `--flush-interval`: a batch waits at least 100 µs (less only burns CPU) and at most 60 s.
    public static let flushIntervalLimits: ClosedRange<UInt64> = 100_000...60_000_000_000
    /// `--min-wait`: 0 (off) to 10 ms; longer, a flush falls due that much late.
    public static let minimumWaitLimits: ClosedRange<UInt64> = 0...10_000_000
    /// `--shutdown-timeout`: 10 ms to 60 s (systemd's stop timeout is 90 s by default).
    public static let shutdownTimeoutLimits: ClosedRange<UInt64> = 10_000_000...60_000_000_000
    /// `--self-metrics-interval` when not 0 (off): 100 ms to 1 h.
    public static let selfMetricsIntervalLimits: ClosedRange<UInt64> = 100_000_000...3_600_000_000_000

    /// Why `prefix` cannot begin a StatsD metric name, or `nil` if it can: 1-200 bytes, without
    /// a character that would end the name or the line (`:`, `|`, `@`, `#`, a space or a control
    /// character), and not beginning or ending with `.`.
    public static func prefixProblem(_ prefix: String) -> String? {
        if prefix.isEmpty || prefix.utf8.count > 200 { return "must be 1-200 bytes" }
        if let bad = prefix.unicodeScalars.first(where: { ":|@# ".unicodeScalars.contains($0) || $0.properties.generalCategory == .control }) {
            return "must not contain '\(bad.escaped(asASCII: true))' (it would end the metric name or the line)"
        }
        if prefix.hasPrefix(".") || prefix.hasSuffix(".") { return "must not begin or end with '.'" }
        return nil
    }

    /// `--stop-delay`: 0 (drain at once) to 10 min (a balancer's checks need seconds; systemd's
    /// `TimeoutStopSec` must cover it with `--shutdown-timeout`).
    public static let stopDelayLimits: ClosedRange<UInt64> = 0...600_000_000_000
    /// `--health-interval`: 10 ms to 1 h.
    public static let healthIntervalLimits: ClosedRange<UInt64> = 10_000_000...3_600_000_000_000
    /// `--health-timeout`: at least 1 ms; at most `--health-interval` (checked in `validate()`).
    public static let healthTimeoutLimits: ClosedRange<UInt64> = 1_000_000...healthIntervalLimits.upperBound
    /// `--flap-hold`: 0 (no flap damping) to 1 h.
    public static let flapHoldLimits: ClosedRange<UInt64> = 0...3_600_000_000_000
    /// `--flap-hold-max`: at least `--flap-hold` (checked in `validate()`), at most 24 h.
    public static let flapHoldMaxLimits: ClosedRange<UInt64> = 0...86_400_000_000_000
    /// `--dns-refresh`: 100 ms to 24 h.
    public static let dnsRefreshLimits: ClosedRange<UInt64> = 100_000_000...86_400_000_000_000
    /// `--rcvbuf`: a page to the most `setsockopt` takes (an `int`).
    public static let receiveBufferLimits: ClosedRange<Int> = 4_096...Int(Int32.max)
    /// `--hold-bytes`: 0 (hold nothing) to 2 GiB.
    public static let holdBytesLimits: ClosedRange<Int> = 0...(2 << 30)
    /// `--tcp-backend-queue`: 64 KiB to 1 GiB.
    public static let tcpBackendQueueLimits: ClosedRange<Int> = (64 << 10)...(1 << 30)
    /// `--replay-rate`: 1 KiB/s to 1 GiB/s.
    public static let replayRateLimits: ClosedRange<Int> = (1 << 10)...(1 << 30)
}
