import RelayKernel
import ArgumentParser
import Glibc
import Logging
import UringRelay

/// The relay itself: `statsrelay [options] BACKEND…`.
struct RunCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Relay StatsD over UDP to backends (the default command).",
        discussion: """
            BACKEND is HOST:PORT[:INSTANCE][=WEIGHT] or [IPv6]:PORT[:INSTANCE][=WEIGHT]. Each metric \
            name is hashed to one backend: by default (--hash jump) with FNV-1a 64 and the jump \
            consistent hash over the backends in the order given, as the Go StatsRelay does; \
            --hash etsy and --hash ketama place it on etsy statsd proxy.js's or twemproxy's md5 \
            ring, where WEIGHT applies. The Go StatsRelay spellings -bind, -port, -packetlen and \
            -bufsize are accepted.
            """
    )

    @Option(name: [.customLong("bind"), .customLong("bind", withSingleDash: true)], help: "Address to listen on.")
    var bind = "0.0.0.0"

    @Option(name: [.customLong("port"), .customLong("port", withSingleDash: true)], parsing: .unconditional, help: "UDP port to listen on.")
    var port = 8125

    @Option(
        name: [.customLong("packet-len"), .customLong("packetlen", withSingleDash: true)], parsing: .unconditional,
        help: "Largest outgoing datagram in bytes (a longer single line goes alone).")
    var packetLen = 1400

    @Option(name: .customLong("flush-interval"), parsing: .unconditional, help: "Longest a line waits in a batch (e.g. 10ms, 1s).")
    var flushInterval = "10ms"

    @Option(
        name: [.customLong("rcvbuf"), .customLong("bufsize", withSingleDash: true)], parsing: .unconditional,
        help: "Socket receive buffer to request, bytes (K/M/G suffixes allowed).")
    var rcvbuf = "8M"

    @Option(name: .customLong("max-datagram"), parsing: .unconditional, help: "Largest datagram received whole; larger ones are dropped and counted.")
    var maxDatagram = 8192

    @Option(name: .customLong("receive-buffers"), parsing: .unconditional, help: "Receive buffers per worker in the provided-buffer ring (a power of two).")
    var receiveBuffers = 128

    @Option(name: .customLong("min-wait"), parsing: .unconditional, help: "How long, from its start, a worker's wait gathers completions (up to 32) before the first one ends it (io_uring_enter2 minimum wait, Linux 6.12+; 0 disables).")
    var minWait = "250us"

    @Option(name: .customLong("shutdown-timeout"), parsing: .unconditional, help: "Longest a stop may take: two thirds for receiving what is still arriving, the rest for the final sends.")
    var shutdownTimeout = "900ms"

    @Option(name: .customLong("threads"), parsing: .unconditional, help: "Worker threads, each pinned to its own CPU (default: the CPUs this process may use).")
    var threads: Int?

    @Option(name: .customLong("cpus"), help: "CPUs to pin workers to, e.g. 0-3,8 (default: the CPUs this process may use).")
    var cpus: String?

    @Flag(name: .customLong("reuseport-group"), help: "Share the port with other processes' SO_REUSEPORT sockets (the kernel splits the traffic between them). Without it the relay refuses a port another socket holds.")
    var reusePortGroup = false

    @Option(name: .customLong("io-backend"), help: "auto (io_uring where the kernel allows it, else portable), uring or portable (recvmmsg/sendmmsg).")
    var ioBackend: IOBackendChoice = .auto

    @Option(
        name: .customLong("hash"),
        help: ArgumentHelp(
            "jump (FNV-1a 64 and jump hash: the Go StatsRelay), etsy (etsy statsd proxy.js's hashring) or ketama (twemproxy's md5 ketama).",
            valueName: "mode"))
    var hash: HashMode = .jump

    @OptionGroup var health: HealthOptions

    @Option(name: .customLong("admin"), help: "Admin endpoint (GET /metrics, /healthz), ADDR:PORT or none; loopback by default.")
    var admin = AdminAddress.defaultSpec

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel = "info"

    @Argument(help: "Backends, HOST:PORT[:INSTANCE][=WEIGHT], in routing order.")
    var backends: [String] = []

    func validate() throws {
        do { _ = try makeConfiguration() } catch { throw ValidationError(error.description) }
        do { _ = try AdminAddress.parse(admin) } catch { throw ValidationError(error.description) }
        if Logger.Level(rawValue: logLevel) == nil {
            throw ValidationError("invalid --log-level '\(logLevel)': expected trace, debug, info, notice, warning, error or critical")
        }
    }

    /// The relay configuration the options describe.
    func makeConfiguration() throws(ConfigurationError) -> RelayConfiguration {
        var parsed: [BackendAddress] = []
        for backend in backends { parsed.append(try BackendAddress(parsing: backend)) }
        var configuration = RelayConfiguration(backends: parsed)
        configuration.hashMode = hash
        configuration.bindHost = bind
        guard (0...65_535).contains(port) else {
            throw ConfigurationError(argument: "--port", value: "\(port)", reason: "must be 0-65535")
        }
        configuration.port = UInt16(port)
        configuration.packetBytes = packetLen
        configuration.flushIntervalNanoseconds = try DurationParser.nanoseconds(
            flushInterval, argument: "--flush-interval", in: RelayConfiguration.flushIntervalLimits)
        configuration.receiveBufferBytes = try ByteSizeParser.bytes(
            rcvbuf, argument: "--rcvbuf", in: RelayConfiguration.receiveBufferLimits)
        configuration.maxDatagramBytes = maxDatagram
        configuration.receiveBuffers = receiveBuffers
        configuration.ioBackend = ioBackend
        configuration.reusePortGroup = reusePortGroup
        configuration.shutdownTimeoutNanoseconds = try DurationParser.nanoseconds(
            shutdownTimeout, argument: "--shutdown-timeout", in: RelayConfiguration.shutdownTimeoutLimits)
        // A bare 0 is how operators switch the minimum wait off (the help says so); any other
        // value needs its unit.
        let minimumWait = minWait == "0"
            ? 0 : try DurationParser.nanoseconds(minWait, argument: "--min-wait", in: RelayConfiguration.minimumWaitLimits)
        configuration.minimumWaitMicroseconds = UInt32(minimumWait / 1_000)
        try health.apply(to: &configuration)
        let allowed = WorkerThread.allowedCPUs
        if let cpus { configuration.cpus = try CPUList.parse(cpus) }
        // More workers than CPUs only compete for them (and each costs its buffers): refused
        // unless the CPUs are named with --cpus, the operator's explicit choice.
        if let threads, cpus == nil, !allowed.isEmpty, threads > allowed.count {
            throw ConfigurationError(
                argument: "--threads", value: "\(threads)",
                reason: "this process may use \(allowed.count) CPU\(allowed.count == 1 ? "" : "s") "
                    + "(\(allowed.map(String.init).joined(separator: ","))): give at most \(allowed.count), "
                    + "or name the CPUs to pin workers to with --cpus")
        }
        configuration.threads = threads ?? configuration.cpus?.count ?? max(1, allowed.count)
        try configuration.validate()
        return configuration
    }

    func run() throws {
        // Before anything is opened: a closed 0, 1 or 2 would go to the relay's first eventfd or
        // socket, and the log and exit report with it.
        let reopened = StandardDescriptors.openMissing()
        let level = Logger.Level(rawValue: logLevel) ?? .info
        LoggingSystem.bootstrap { label in RelayLogHandler(label: label, level: level) }
        let logger = Logger(label: "statsrelay")
        if !reopened.isEmpty {
            logger.notice("descriptors closed at start now hold /dev/null", metadata: [
                "descriptors": "\(reopened.map(String.init).joined(separator: ","))",
            ])
        }
        let configuration = try makeConfiguration()
        // Blocked before any thread starts, so only the main thread ever takes them; SIGPIPE
        // is ignored so that a log reader going away is a counted write error, not death.
        let signals = SignalWaiter(blocking: SignalWaiter.relaySignals, ignoring: [SIGPIPE])
        if let refusal = StartupDiagnosis.checkDescriptors(configuration) {
            printError(refusal)
            throw ExitCode(71)
        }
        let addresses: [SocketAddress]
        do {
            addresses = try resolveBackends(configuration, signals: signals, logger: logger)
        } catch let error as BackendResolutionError {
            printError("\(error)")
            throw ExitCode(75)  // EX_TEMPFAIL: the resolver, not the command line, is at fault
        } catch {
            printError("\(error)")
            throw ExitCode(71)
        }
        let relay: Relay
        do {
            relay = try Relay(configuration: configuration, addresses: addresses, logger: logger)
        } catch let error as ConfigurationError {
            printError("\(error)")
            throw ExitCode(64)
        } catch {
            printError("\(error)")
            throw ExitCode(71)  // an eventfd the health monitor could not have
        }
        // Bound before the workers start, so a taken admin port fails before anything relays;
        // it answers 503 `starting` until they run, and stops after the exit report.
        let adminServer: AdminServer?
        do {
            adminServer = try AdminAddress.parse(admin).map { address throws(SystemCallError) in
                try AdminServer(
                    address: address, endpoint: AdminEndpoint(relay: relay, version: StatsRelayVersion.number),
                    avoidingCPUs: relay.workerCPUs)
            }
        } catch {
            printError("\(error)")
            throw ExitCode(71)
        }
        defer { adminServer?.stop() }
        let facts: WorkerFacts
        do { facts = try relay.start() } catch let error as ConfigurationError {
            printError("\(error)")
            throw ExitCode(64)  // a backend reaching the port the kernel chose (--port 0)
        } catch let error as Relay.DriverUnavailable {
            printError("\(error)")
            throw ExitCode(69)  // EX_UNAVAILABLE: --io-backend uring where io_uring cannot run
        } catch let error as SystemCallError {
            printError(StartupDiagnosis.explain(error, configuration: configuration))
            throw ExitCode(71)
        } catch {
            printError("\(error)")
            throw ExitCode(71)
        }
        logStartup(facts, configuration: configuration, relay: relay, logger: logger)
        if let adminServer {
            logger.info("admin endpoint on http://\(adminServer.address) (GET /metrics, /healthz)")
        }
        let stopSignal = waitForStop(signals, relay: relay, configuration: configuration, logger: logger)
        logger.info("stopping: draining received datagrams and flushing batches", metadata: ["signal": "\(SignalWaiter.name(of: stopSignal))"])
        relay.stop()
        let (counters, failures) = relay.wait()
        printError(report(counters, relay: relay, configuration: configuration))
        if !failures.isEmpty {
            for failure in failures { logger.error("\(failure)") }
            throw ExitCode(70)
        }
        logger.info("stopped")
    }

    /// Looks the backends' names up, all at once on lookup threads, while the main thread keeps
    /// answering signals: `SIGTERM` or `SIGINT` ends the wait at once, as a resolver that does
    /// not answer within `BackendLookup.defaultLimitNanoseconds` does.
    ///
    /// - Throws: `BackendResolutionError` naming the first backend without an address and why
    ///   (the resolver's reason, no answer in time, or the stop signal); `SystemCallError` when
    ///   the lookups' eventfd cannot be created.
    private func resolveBackends(_ configuration: RelayConfiguration, signals: SignalWaiter, logger: Logger) throws -> [SocketAddress] {
        let lookup = try BackendLookup(backends: configuration.backends)
        if !lookup.collect() {
            logger.info("resolving backend names", metadata: [
                "backends": "\(lookup.unanswered.map(\.description).joined(separator: " "))",
            ])
        }
        let started = MonotonicClock.nanoseconds()
        while !lookup.collect() {
            let left = lookup.remainingNanoseconds
            if left == 0 { break }
            guard let signal = signals.wait(orUntil: lookup.answered, timeoutNanoseconds: left) else { continue }
            let name = SignalWaiter.name(of: signal)
            guard signal == SIGTERM || signal == SIGINT else {
                logger.notice("ignored: the relay is still resolving its backends' names", metadata: ["signal": "\(name)"])
                continue
            }
            let unanswered = lookup.unanswered
            lookup.abandon()
            let waited = Double((MonotonicClock.nanoseconds() - started) / 1_000_000) / 1_000
            throw BackendResolutionError(
                backend: unanswered.first ?? configuration.backends[0],
                reason: "stopped by \(name) after \(waited)s without an answer from the resolver"
                    + (unanswered.count > 1 ? " (nor for \(unanswered.dropFirst().map(\.description).joined(separator: " ")))" : ""))
        }
        return try lookup.addresses()
    }

    /// Takes signals on the main thread until one that stops the relay (`SIGTERM`, `SIGINT`)
    /// arrives, and returns it. The others are answered in the log and never stop it:
    /// `SIGHUP` (nothing to reload yet), `SIGUSR1` (the live counters), `SIGUSR2` (ignored).
    private func waitForStop(_ signals: SignalWaiter, relay: Relay, configuration: RelayConfiguration, logger: Logger) -> Int32 {
        while true {
            let signal = signals.wait()
            let name = SignalWaiter.name(of: signal)
            switch signal {
            case SIGHUP:
                logger.notice(
                    "nothing to reload: the relay has no configuration file yet, only its command line; restart it to change settings",
                    metadata: ["signal": "\(name)"])
            case SIGUSR1:
                logger.notice(
                    "live counters (each worker publishes its own every 100ms) follow",
                    metadata: ["signal": "\(name)"])
                printError(report(relay.liveCounters(), relay: relay, configuration: configuration), patienceMilliseconds: 0)
            case SIGUSR2:
                logger.notice("ignored: SIGUSR2 has no meaning here", metadata: ["signal": "\(name)"])
            default:
                return signal
            }
        }
    }

    /// The counter report printed at exit and on `SIGUSR1`: the relay's counters, each
    /// backend's health, and the log's own write errors.
    private func report(_ counters: RelayCounters, relay: Relay, configuration: RelayConfiguration) -> String {
        // Backends are labelled by identity, whatever pool each worker ended in.
        var lines = [counters.report()]
        lines.append("statsrelay.io_backend{driver=\"\(relay.driver.rawValue)\"} 1")
        lines.append("statsrelay.fail_open_activations \(relay.monitor.failOpenActivations)")
        let now = MonotonicClock.nanoseconds()
        for status in relay.monitor.status {
            lines.append("statsrelay.backend.up{backend=\"\(status.backend)\"} \(status.state == .up ? 1 : 0)")
            lines.append("statsrelay.backend.state_changes{backend=\"\(status.backend)\"} \(status.changes)")
            lines.append("statsrelay.backend.state_seconds{backend=\"\(status.backend)\"} \((now - status.since) / 1_000_000_000)")
        }
        lines.append("statsrelay.log_write_errors \(LogWriter.standardError.failedWrites)")
        return lines.joined(separator: "\n")
    }

    private func logStartup(_ facts: WorkerFacts, configuration: RelayConfiguration, relay: Relay, logger: Logger) {
        let backends = zip(configuration.backends, relay.backendAddresses).enumerated().map { index, pair in
            pair.0.host == pair.1.host ? "\(index):\(pair.0)" : "\(index):\(pair.0)=\(pair.1)"
        }
        logger.info("listening on \(facts.listen)", metadata: [
            "backends": "\(backends.joined(separator: " "))",
            "packet_len": "\(configuration.packetBytes)",
            "flush_interval": "\(DurationParser.format(configuration.flushIntervalNanoseconds))",
            "max_datagram": "\(configuration.maxDatagramBytes)",
            "rcvbuf_requested": "\(configuration.receiveBufferBytes)",
            "rcvbuf_obtained": "\(facts.receiveBufferBytes)",
            "threads": "\(configuration.threads)",
            "kernel": "\(KernelSupport.release)",
            "ring_flags": "\(facts.ringFlags.joined(separator: "|"))",
            "min_wait": "\(configuration.minimumWaitMicroseconds == 0 ? "off" : facts.minimumWait ? "\(configuration.minimumWaitMicroseconds)us" : "unsupported")",
            "receive_buffers": "\(facts.receiveBuffers)x\(facts.receiveBufferSize)",
            "send_slots": "\(facts.sendSlots)",
            "health_check": "\(configuration.healthCheck.rawValue)",
            "on_backend_down": "\(configuration.onBackendDown.rawValue)",
            "hash": "\(configuration.hashMode.rawValue)",
        ])
        if facts.receiveBufferBytes < configuration.receiveBufferBytes {
            logger.warning("receive buffer smaller than requested: raise net.core.rmem_max or run with CAP_NET_ADMIN", metadata: [
                "requested": "\(configuration.receiveBufferBytes)", "obtained": "\(facts.receiveBufferBytes)",
            ])
        }
    }
}

/// Writes one line to standard error through the process's one log writer: a reader that
/// has gone away costs a counted write error (`statsrelay.log_write_errors`), never the process.
///
/// - Parameter patienceMilliseconds: how long to wait in all for a reader that is behind; the
///   default suits start-up errors and the exit report, printed while no worker runs.
func printError(_ text: String, patienceMilliseconds: Int32 = 1_000) {
    LogWriter.standardError.write(text + "\n", patienceMilliseconds: patienceMilliseconds)
}

extension IOBackendChoice: ExpressibleByArgument {}
