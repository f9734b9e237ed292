import RelayKernel
import ArgumentParser
import UringRelay

/// Backend health checks and what happens to a dead backend's metrics; shared by `run` and `hash`.
///
/// Every option is optional: one not given leaves the configuration file's value (`run
/// --config`), else the default named in its help (`RelayConfiguration`'s).
struct HealthOptions: ParsableArguments {
    @Option(name: .customLong("health-check"), help: ArgumentHelp(
        "none, tcp (connect to the backend's port) or statsd-admin (etsy statsd's management port: 'health' → 'health: up') (default: none).",
        valueName: "mode"))
    var mode: HealthCheckMode?

    @Option(name: .customLong("health-check-port"), parsing: .unconditional, help: "Port to check (default: the backend's port for tcp, 8126 for statsd-admin).")
    var port: Int?

    @Option(name: .customLong("health-interval"), parsing: .unconditional, help: "Time between checks (default: 1s).")
    var interval: String?

    @Option(name: .customLong("health-timeout"), parsing: .unconditional, help: "Longest a check may take (default: 500ms).")
    var timeout: String?

    @Option(name: .customLong("health-rise"), parsing: .unconditional, help: "Consecutive successes that bring a backend up (default: 2).")
    var rise: Int?

    @Option(name: .customLong("health-fall"), parsing: .unconditional, help: "Consecutive failures (or rounds with refused sends) that take a backend down (default: 3).")
    var fall: Int?

    @Option(name: .customLong("on-backend-down"), help: ArgumentHelp(
        "rehash (move only its metrics to live backends), hold (keep its batches, bounded, until it recovers) or drop. With every backend down, rehash and drop fail open (send to the primaries) (default: rehash).",
        valueName: "policy"))
    var onBackendDown: DownPolicy?

    @Option(name: .customLong("hold-bytes"), parsing: .unconditional, help: "Bytes held under 'hold' for the whole relay, every backend and worker together (K/M/G allowed); past it the oldest are dropped and counted (default: 64M).")
    var holdBytes: String?

    @Option(name: .customLong("replay-rate"), parsing: .unconditional, help: "Bytes per second replayed to a backend that is back, for the whole relay (K/M/G allowed); its new lines queue behind the replay (default: 1M).")
    var replayRate: String?

    @Option(name: .customLong("dns-refresh"), parsing: .unconditional, help: "How often backends given by name are resolved again (default: 30s).")
    var dnsRefresh: String?

    @Option(name: .customLong("flap-hold"), parsing: .unconditional, help: "Flap damping: a backend down again within --flap-hold-max of coming up stays down at least this long, doubled at each further flap; 0 turns damping off (default: 30s).")
    var flapHold: String?

    @Option(name: .customLong("flap-hold-max"), parsing: .unconditional, help: "The longest flap hold-down, and how long a backend must stay up for its flaps to be forgotten (default: 10m).")
    var flapHoldMax: String?

    /// Writes the options given into `settings`, under their configuration-file keys.
    func write(to settings: inout ConfigFile) {
        settings.healthCheck = mode?.rawValue
        settings.healthCheckPort = port
        settings.healthInterval = interval
        settings.healthTimeout = timeout
        settings.healthRise = rise
        settings.healthFall = fall
        settings.onBackendDown = onBackendDown?.rawValue
        settings.holdBytes = holdBytes
        settings.replayRate = replayRate
        settings.dnsRefresh = dnsRefresh
        settings.flapHold = flapHold
        settings.flapHoldMax = flapHoldMax
    }

    /// Writes the options given into `configuration`.
    ///
    /// - Throws: `ConfigurationError` naming the option (`--health-interval`).
    func apply(to configuration: inout RelayConfiguration) throws(ConfigurationError) {
        var settings = ConfigFile()
        write(to: &settings)
        do { try settings.apply(to: &configuration) } catch { throw ConfigFile.asFlag(error) }
    }
}

// argument-parser rejects any other value, naming it and the allowed ones, with exit status 64.
extension HealthCheckMode: ExpressibleByArgument {}
extension DownPolicy: ExpressibleByArgument {}
