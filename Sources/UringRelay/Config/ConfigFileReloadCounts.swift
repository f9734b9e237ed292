import Synchronization

/// How the configuration reloads went: how many succeeded and failed, whether the last one
/// succeeded, and when the last success was (`statsrelay_config_reloads_total{result}`,
/// `statsrelay_config_last_reload_successful`, `statsrelay_config_last_reload_success_timestamp_seconds`).
///
/// Written by the thread that reloads (the main thread, at SIGHUP), read by the admin endpoint's;
/// every field is an atomic of its own, so a scrape never waits for a reload.
public final class ConfigFileReloadCounts: Sendable {
    private let successes = Atomic<UInt64>(0)
    private let failures = Atomic<UInt64>(0)
    private let lastFailed = Atomic<Bool>(false)
    /// The Unix time of the last success, as the bits of a `Double`; 0 for none yet.
    private let lastSuccessBits = Atomic<UInt64>(0)

    public init() {}

    /// Counts a reload whose new configuration is now in force (whatever it had to keep).
    ///
    /// - Parameter unixTime: when, in seconds since the Unix epoch.
    public func recordSuccess(at unixTime: Double) {
        successes.add(1, ordering: .relaxed)
        lastSuccessBits.store(unixTime.bitPattern, ordering: .relaxed)
        lastFailed.store(false, ordering: .relaxed)
    }

    /// Counts a reload refused (the running configuration stays whole).
    public func recordFailure() {
        failures.add(1, ordering: .relaxed)
        lastFailed.store(true, ordering: .relaxed)
    }

    /// Reloads that succeeded.
    public var succeeded: UInt64 { successes.load(ordering: .relaxed) }
    /// Reloads refused.
    public var failed: UInt64 { failures.load(ordering: .relaxed) }
    /// Whether the last reload was refused (`false` before any).
    public var lastReloadFailed: Bool { lastFailed.load(ordering: .relaxed) }
    /// The Unix time of the last successful reload, or `nil` before any.
    public var lastSuccessUnixSeconds: Double? {
        let bits = lastSuccessBits.load(ordering: .relaxed)
        return bits == 0 ? nil : Double(bitPattern: bits)
    }
}
