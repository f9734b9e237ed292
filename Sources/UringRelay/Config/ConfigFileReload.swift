/// What a reload (SIGHUP) does with a new configuration: key by key, what changed, and whether
/// it is applied now or kept at its running value until the next start.
///
/// Applied now (`ConfigFile.Reload.applied`): `listeners` (UDP listeners added or removed, a
/// removed one drained first: `Relay.reload`), `backends` (added, removed, reordered, a backend's
/// label or health-check port), `on-backend-down`, `packet-len`, `flush-interval` (through every
/// worker's control channel), the health checks (`health-check`,
/// `health-check-port`, `health-interval`, `health-timeout`, `health-rise`, `health-fall`),
/// flap damping (`flap-hold`, `flap-hold-max`), `dns-refresh`, `stop-delay` and `log-level`. Every other key keeps its running value and is logged as
/// needing a restart. Leaving `hold` applies at once too: packets held until then stay queued
/// for their backends and are replayed when each is back (`RelayCore.nextOutgoing`); the change
/// says so in its `note`.
public struct ConfigFileReload: Sendable, Equatable {
    /// One key whose value differs between the running configuration and the file.
    public struct Change: Sendable, Equatable {
        /// The key, e.g. `packet-len`.
        public var key: String
        /// The running value, as a log shows it.
        public var running: String
        /// The file's value.
        public var file: String
        /// Whether it was applied.
        public var applied: Bool
        /// Why not, when it was not: the key's rule (`ConfigFile.Reload`).
        public var reason: String?
        /// What an applied change leaves to finish, for the log (held packets that still drain
        /// after leaving `hold`).
        public var note: String?
    }

    /// The changed keys, in `ConfigFile.keys` order.
    public var changes: [Change]
    /// The configuration in force after the reload: the running one with the applied keys
    /// taken from the file.
    public var result: RelayConfiguration
    /// Workers that did not apply the reload (stopped, or not answering within
    /// `Relay.workerAnswerNanoseconds`): 0 when every worker did (`Relay.reload` counts the
    /// reload a success only then).
    public var workersNotApplied = 0

    /// The plan for going from `running` to `candidate`.
    ///
    /// - Parameters:
    ///   - running: the configuration in force.
    ///   - candidate: the new configuration, validated.
    ///   - holdBytesInUse: bytes held for down backends now (`Relay.holdBytesInUse`), for the
    ///     note of a change that leaves `hold`.
    public init(running: RelayConfiguration, candidate: RelayConfiguration, holdBytesInUse: Int) {
        var result = running
        var changes: [Change] = []
        for key in ConfigFile.keys where key.name != "bind" && key.name != "port" {
            let before = ConfigFile.value(of: key.name, in: running)
            let after = ConfigFile.value(of: key.name, in: candidate)
            // A backend's health-check port is not in its one-line form when unchanged elsewhere.
            let differs = key.name == "backends" ? running.backends != candidate.backends : before != after
            guard differs else { continue }
            var change = Change(key: key.name, running: before, file: after, applied: false, reason: nil)
            switch key.reload {
            case .applied:
                change.applied = true
                Self.take(key.name, from: candidate, into: &result)
                if key.name == "on-backend-down", running.onBackendDown == .hold, holdBytesInUse > 0 {
                    change.note = "\(holdBytesInUse) bytes held for down backends stay queued for them: each backend's are"
                        + " replayed when it is back, at --replay-rate, and its new lines wait behind them; what is still"
                        + " held at a stop counts in held_at_exit. New lines for a down backend follow \(candidate.onBackendDown.rawValue)"
                }
            case .atNextStart:
                change.reason = "needs a restart: the workers take it only when they start; applied at next start"
            case .restart:
                change.reason = "needs a restart: fixed for the life of the process; applied at next start"
            }
            changes.append(change)
        }
        self.changes = changes
        self.result = result
    }

    /// Copies the value of the reloadable key `key` from `candidate` into `result`.
    private static func take(_ key: String, from candidate: RelayConfiguration, into result: inout RelayConfiguration) {
        switch key {
        case "backends": result.backends = candidate.backends
        case "listeners":
            // The --tcp-port listener is on `bindHost`, but tcp-port needs a restart: it stays
            // where it is until then.
            if result.tcpPort != nil && result.tcpPortHost == nil && candidate.bindHost != result.bindHost {
                result.tcpPortHost = result.bindHost
            }
            result.bindHost = candidate.bindHost
            result.port = candidate.port
            result.additionalListeners = candidate.additionalListeners
            result.unixSocketModes = candidate.unixSocketModes
            // The file's tcp: listeners (tcp-port, a key of its own, needs a restart).
            result.tcpListeners = candidate.tcpListeners
        case "health-check": result.healthCheck = candidate.healthCheck
        case "health-check-port": result.healthCheckPort = candidate.healthCheckPort
        case "health-interval": result.healthIntervalNanoseconds = candidate.healthIntervalNanoseconds
        case "health-timeout": result.healthTimeoutNanoseconds = candidate.healthTimeoutNanoseconds
        case "health-rise": result.healthRise = candidate.healthRise
        case "health-fall": result.healthFall = candidate.healthFall
        case "on-backend-down": result.onBackendDown = candidate.onBackendDown
        case "packet-len": result.packetBytes = candidate.packetBytes
        case "flush-interval": result.flushIntervalNanoseconds = candidate.flushIntervalNanoseconds
        case "dns-refresh": result.dnsRefreshNanoseconds = candidate.dnsRefreshNanoseconds
        case "log-level": result.logLevel = candidate.logLevel
        case "stop-delay": result.stopDelayNanoseconds = candidate.stopDelayNanoseconds
        case "flap-hold-max": result.flapHoldMaxNanoseconds = candidate.flapHoldMaxNanoseconds
        case "flap-hold": result.flapHoldNanoseconds = candidate.flapHoldNanoseconds
        default: preconditionFailure("key '\(key)' is not reloadable")
        }
    }

    /// The keys applied.
    public var applied: [Change] { changes.filter(\.applied) }
    /// The keys kept at their running value.
    public var kept: [Change] { changes.filter { !$0.applied } }
}
