import RelayKernel
import ArgumentParser
import UringRelay

/// Backend health checks and what happens to a dead backend's metrics; shared by `run` and `hash`.
struct HealthOptions: ParsableArguments {
    @Option(name: .customLong("health-check"), help: ArgumentHelp(
        "none, tcp (connect to the backend's port) or statsd-admin (etsy statsd's management port: 'health' → 'health: up').",
        valueName: "mode"))
    var mode: HealthCheckMode = .none

    @Option(name: .customLong("health-check-port"), parsing: .unconditional, help: "Port to check (default: the backend's port for tcp, 8126 for statsd-admin).")
    var port: Int?

    @Option(name: .customLong("health-interval"), parsing: .unconditional, help: "Time between checks.")
    var interval = "1s"

    @Option(name: .customLong("health-timeout"), parsing: .unconditional, help: "Longest a check may take.")
    var timeout = "500ms"

    @Option(name: .customLong("health-rise"), parsing: .unconditional, help: "Consecutive successes that bring a backend up.")
    var rise = 2

    @Option(name: .customLong("health-fall"), parsing: .unconditional, help: "Consecutive failures (or rounds with refused sends) that take a backend down.")
    var fall = 3

    @Option(name: .customLong("on-backend-down"), help: ArgumentHelp(
        "rehash (move only its metrics to live backends), hold (keep its batches, bounded, until it recovers) or drop. With every backend down, rehash and drop fail open (send to the primaries).",
        valueName: "policy"))
    var onBackendDown: DownPolicy = .rehash

    @Option(name: .customLong("hold-bytes"), parsing: .unconditional, help: "Bytes held under 'hold' for the whole relay, every backend and worker together (K/M/G allowed); past it the oldest are dropped and counted.")
    var holdBytes = "64M"

    @Option(name: .customLong("replay-rate"), parsing: .unconditional, help: "Bytes per second replayed to a backend that is back, for the whole relay (K/M/G allowed); its new lines queue behind the replay.")
    var replayRate = "1M"

    @Option(name: .customLong("dns-refresh"), parsing: .unconditional, help: "How often backends given by name are resolved again.")
    var dnsRefresh = "30s"

    /// Writes these options into `configuration`.
    func apply(to configuration: inout RelayConfiguration) throws(ConfigurationError) {
        configuration.healthCheck = mode
        if let port {
            guard (1...65_535).contains(port) else {
                throw ConfigurationError(argument: "--health-check-port", value: "\(port)", reason: "must be 1-65535")
            }
            configuration.healthCheckPort = UInt16(port)
        }
        configuration.healthIntervalNanoseconds = try DurationParser.nanoseconds(
            interval, argument: "--health-interval", in: RelayConfiguration.healthIntervalLimits)
        configuration.healthTimeoutNanoseconds = try DurationParser.nanoseconds(
            timeout, argument: "--health-timeout", in: RelayConfiguration.healthTimeoutLimits)
        configuration.healthRise = rise
        configuration.healthFall = fall
        configuration.onBackendDown = onBackendDown
        configuration.holdBytes = try ByteSizeParser.bytes(holdBytes, argument: "--hold-bytes", in: RelayConfiguration.holdBytesLimits)
        configuration.replayBytesPerSecond = try ByteSizeParser.bytes(
            replayRate, argument: "--replay-rate", in: RelayConfiguration.replayRateLimits)
        configuration.dnsRefreshNanoseconds = try DurationParser.nanoseconds(
            dnsRefresh, argument: "--dns-refresh", in: RelayConfiguration.dnsRefreshLimits)
    }
}

// argument-parser rejects any other value, naming it and the allowed ones, with exit status 64.
extension HealthCheckMode: ExpressibleByArgument {}
extension DownPolicy: ExpressibleByArgument {}
