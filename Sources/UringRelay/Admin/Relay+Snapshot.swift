import Glibc
import RelayKernel

extension Relay {
    /// What the relay shows now, for `GET /metrics`: the workers' published counters summed
    /// (no lock on the per-datagram path: each worker copies its counters to its board at a
    /// turn boundary), the health view, the pool's fingerprint and the process's facts.
    ///
    /// - Parameters:
    ///   - version: the relay's version, e.g. `0.1.0`.
    ///   - startTimeUnixSeconds: when the relay started.
    ///   - now: the monotonic time (nanoseconds) the ages are measured to.
    ///   - unixNow: the wall-clock time at `now`, to date the health view's state changes.
    public func snapshot(
        version: String, startTimeUnixSeconds: Double,
        now: UInt64 = MonotonicClock.nanoseconds(), unixNow: Double = Relay.unixTime()
    ) -> RelaySnapshot {
        let pool = routing.current
        let workers = workerStatus
        let backends = monitor.status.map { status in
            var backend = RelaySnapshot.Backend(
                identity: status.backend.description, up: status.state == .up, stateChanges: status.changes,
                stateSinceUnixSeconds: unixNow - Double(now &- min(now, status.since)) / 1e9)
            backend.flapHolds = status.flapHolds
            return backend
        }
        var snapshot = RelaySnapshot(
            counters: liveCounters(), backends: backends,
            listeners: listenAddresses.map(WorkerSetup.label) + tcpListenAddresses.map(TCPIngest.label),
            ioDriver: driver.rawValue, version: version, hashMode: pool.hashMode.rawValue,
            ringFingerprint: pool.ringFingerprint, holdInUseBytes: holdBytesInUse,
            holdLimitBytes: configuration.holdBytes, failOpenActivations: monitor.failOpenActivations,
            failingOpen: monitor.isFailingOpen,
            workerCounterAgesSeconds: workers.publishedAt.map { Double(now &- min(now, $0)) / 1e9 },
            logWriteErrors: LogWriter.standardError.failedWrites, startTimeUnixSeconds: startTimeUnixSeconds)
        snapshot.configReloadsSucceeded = reloads.succeeded
        snapshot.configReloadsFailed = reloads.failed
        snapshot.configLastReloadSuccessful = !reloads.lastReloadFailed
        snapshot.configLastReloadSuccessUnixSeconds = reloads.lastSuccessUnixSeconds ?? startTimeUnixSeconds
        return snapshot
    }

    /// The wall-clock time in seconds since the Unix epoch (`CLOCK_REALTIME`).
    public static func unixTime() -> Double {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
    }
}
