import RelayKernel
import ArgumentParser
import Glibc
import Logging
import UringRelay

/// The relay itself: `statsrelay [options] BACKEND…`, or `statsrelay --config FILE`.
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
            -bufsize are accepted. \
            With --config FILE, every option can be set in a YAML file under its long name \
            (packet-len: 1400); an option given here overrides the file, and SIGHUP reloads the file \
            (see docs/configuration.md). 'statsrelay check-config FILE' checks a file first.
            """
    )

    @Option(name: .customLong("config"), help: ArgumentHelp(
        "YAML configuration file: every option under its long name, backends in a list. Options given on the command line override it; SIGHUP reloads it.",
        valueName: "file"))
    var config: String?

    @Option(name: [.customLong("bind"), .customLong("bind", withSingleDash: true)], help: "Address to listen on (default: 0.0.0.0).")
    var bind: String?

    @Option(name: [.customLong("port"), .customLong("port", withSingleDash: true)], parsing: .unconditional, help: "UDP port to listen on (default: 8125).")
    var port: Int?

    @Option(name: .customLong("listen"), help: "A listener: UDP ADDR:PORT or [IPv6]:PORT, or a Unix datagram socket unix:PATH; repeat for several. Replaces the file's listeners; not with --bind/--port.")
    var listen: [String] = []

    @Option(name: .customLong("unix-socket"), help: ArgumentHelp(
        "A Unix datagram socket to receive on besides the UDP listeners (the DogStatsD clients' socket); repeat for several. A stale file is replaced; the file is removed at exit.",
        valueName: "path"))
    var unixSocket: [String] = []

    @Option(name: .customLong("unix-socket-mode"), help: ArgumentHelp(
        "File mode of the --unix-socket files, octal: who may send (default: 0660).", valueName: "mode"))
    var unixSocketMode: String?

    @Option(
        name: [.customLong("packet-len"), .customLong("packetlen", withSingleDash: true)], parsing: .unconditional,
        help: "Largest outgoing datagram in bytes (a longer single line goes alone) (default: 1400).")
    var packetLen: Int?

    @Option(name: .customLong("flush-interval"), parsing: .unconditional, help: "Longest a line waits in a batch (e.g. 10ms, 1s) (default: 10ms).")
    var flushInterval: String?

    @Option(
        name: [.customLong("rcvbuf"), .customLong("bufsize", withSingleDash: true)], parsing: .unconditional,
        help: "Socket receive buffer to request, bytes (K/M/G suffixes allowed) (default: 8M).")
    var rcvbuf: String?

    @Option(name: .customLong("max-datagram"), parsing: .unconditional, help: "Largest datagram received whole; larger ones are dropped and counted (default: 8192).")
    var maxDatagram: Int?

    @Option(name: .customLong("receive-buffers"), parsing: .unconditional, help: "Receive buffers per worker in the provided-buffer ring (a power of two) (default: 256).")
    var receiveBuffers: Int?

    @Option(name: .customLong("min-wait"), parsing: .unconditional, help: "How long, from its start, a worker's wait gathers completions (up to 32) before the first one ends it (io_uring_enter2 minimum wait, Linux 6.12+; 0 disables); lengthened up to 8 times (at most a quarter of --flush-interval, and --rcvbuf / 1 KiB microseconds) while a wait gathers fewer than 128 datagrams (half the --receive-buffers) (default: 250us).")
    var minWait: String?

    @Option(name: .customLong("shutdown-timeout"), parsing: .unconditional, help: "Longest a stop may take: two thirds for receiving what is still arriving, the rest for the final sends (default: 900ms).")
    var shutdownTimeout: String?

    @Option(name: .customLong("threads"), parsing: .unconditional, help: "Worker threads, each pinned to its own CPU (default: the CPUs this process may use).")
    var threads: Int?

    @Option(name: .customLong("cpus"), help: "CPUs to pin workers to, e.g. 0-3,8 (default: the CPUs this process may use).")
    var cpus: String?

    @Flag(name: .customLong("reuseport-group"), inversion: .prefixedNo, help: "Share the port with other processes' SO_REUSEPORT sockets (the kernel splits the traffic between them). Without it the relay refuses a port another socket holds (default: off).")
    var reusePortGroup: Bool?

    @Option(name: .customLong("reuseport-steering"), help: "hash (the kernel's: one client socket stays on one worker), random (a BPF program spreads every datagram over all workers, so one busy client uses them all; a client's datagrams may then be relayed out of order) or cpu (each worker takes what the kernel receives on its CPU, so a datagram is read where it arrived; Linux 6.2+) (default: hash).")
    var reusePortSteering: String?

    @Option(name: .customLong("io-backend"), help: "auto (io_uring where the kernel allows it, else portable), uring or portable (recvmmsg/sendmmsg) (default: auto).")
    var ioBackend: IOBackendChoice?

    @Option(
        name: .customLong("hash"),
        help: ArgumentHelp(
            "jump (FNV-1a 64 and jump hash: the Go StatsRelay), etsy (etsy statsd proxy.js's hashring) or ketama (twemproxy's md5 ketama) (default: jump).",
            valueName: "mode"))
    var hash: HashMode?

    @OptionGroup var health: HealthOptions

    @Option(name: .customLong("admin"), help: "Admin endpoint (GET /metrics, /healthz), ADDR:PORT or none; loopback by default (default: \(AdminAddress.defaultSpec)).")
    var admin: String?

    @Option(name: .customLong("control-socket"), help: ArgumentHelp(
        "Serve takeovers on this Unix stream socket (mode 0600): 'statsrelay run --takeover PATH' hands the listening sockets to a new relay without losing a datagram; none turns it off (default: none).",
        valueName: "path"))
    var controlSocket: String?

    @Option(name: .customLong("takeover"), help: ArgumentHelp(
        "Take the listening sockets over from the relay serving this control socket (same listeners and --threads), start on them, then let it finish and exit.",
        valueName: "path"))
    var takeover: String?

    @Option(name: .customLong("log-format"), help: ArgumentHelp(
        "text (swift-log's line) or json (one JSON object per line, metadata as keys) (default: text).", valueName: "format"))
    var logFormat: RelayLogHandler.Format?

    @Option(name: .customLong("self-metrics-interval"), parsing: .unconditional, help: "Every interval, send the relay's own counters (lines received/forwarded/dropped, per-backend lines sent/dropped as deltas, backends up and hold bytes as gauges) as StatsD lines to its own listener, routed like any line; 0 turns it off (default: 0).")
    var selfMetricsInterval: String?

    @Option(name: [.customLong("prefix"), .customLong("prefix", withSingleDash: true)], help: "First segment of the self-metrics' names (default: statsrelay).")
    var prefix: String?

    @Option(name: .customLong("stop-delay"), parsing: .unconditional, help: "On SIGTERM, keep relaying this long with /healthz already 503 'stopping' (a load balancer takes the relay out first), then drain and exit; a second SIGTERM or a SIGINT ends the delay, and SIGINT alone has none (default: 0).")
    var stopDelay: String?

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical (default: info).")
    var logLevel: String?

    @Option(name: .customLong("validate"), help: ArgumentHelp(
        "loose (anything with a name passes, as the Go StatsRelay) or strict (also drop and count lines whose type, value, sample rate, tags or other DogStatsD fields are invalid) (default: loose).",
        valueName: "mode"))
    var validationMode: String?

    @Option(name: .customLong("hash-key"), help: ArgumentHelp(
        "name (route by the metric name, a service check's name, an event's title) or name+tags (by the name and its tags sorted, so tag order never splits a series) (default: name).",
        valueName: "key"))
    var hashKey: String?

    @Option(name: [.customLong("metrics-prefix"), .customLong("metrics-prefix", withSingleDash: true)], help: ArgumentHelp(
        "Prepend P. to every metric's name (the prefixed name is its routing key); DogStatsD service checks and events keep their names. No ':', '|', line ending or NUL; restart-only (default: none).",
        valueName: "P"))
    var metricsPrefix: String?

    @Option(name: [.customLong("metrics-tags"), .customLong("metrics-tags", withSingleDash: true)], help: ArgumentHelp(
        "Append the tags T (k:v,k2) to every line: ',T' after its tags, or a new '|#T' field when it has none (before a service check's m: message). Not part of the routing key; restart-only (default: none).",
        valueName: "T"))
    var metricsTags: String?

    @Option(name: [.customLong("sendproto"), .customLong("sendproto", withSingleDash: true)], help: ArgumentHelp(
        "UDP or TCP: the transport of backends written without udp:// or tcp:// (the Go StatsRelay's -sendproto) (default: UDP).",
        valueName: "protocol"))
    var sendproto: String?

    @Option(name: .customLong("tcp-backend-queue"), help: ArgumentHelp(
        "Per TCP backend and worker, the most bytes held while it connects or is slow (queued, or written and not yet acknowledged); beyond it packets are dropped and counted (default: 4MiB).",
        valueName: "bytes"))
    var tcpBackendQueue: String?

    @Option(name: [.customLong("tcp-port"), .customLong("tcp-port", withSingleDash: true)], help: ArgumentHelp(
        "Also take newline-delimited StatsD over TCP on this port, on the first listener's address (--bind) (default: no TCP listener).",
        valueName: "port"))
    var tcpPort: Int?

    @Option(name: .customLong("tcp-max-connections"), help: ArgumentHelp(
        "The most TCP ingest connections open at once, relay-wide, split evenly over the workers; beyond it a connection is accepted and reset at once, and counted (default: 10000).",
        valueName: "count"))
    var tcpMaxConnections: Int?

    @Option(name: .customLong("tcp-idle-timeout"), help: ArgumentHelp(
        "A TCP ingest connection that sends nothing this long is closed and counted (default: 5m).",
        valueName: "duration"))
    var tcpIdleTimeout: String?

    @Option(name: .customLong("mirror"), help: ArgumentHelp(
        "Mirror pool backends, [udp://|tcp://]HOST:PORT[:INSTANCE][=WEIGHT], in its routing order (a line is sent to them as it is to the primary pool, rewritten by --metrics-prefix/--metrics-tags): a copy of every line (or of --mirror-sample's share of names) also goes to them, best effort, never at the primary pool's expense. Repeat the option or give a comma-separated list (default: none; restart to change).",
        valueName: "backends"))
    var mirror: [String] = []

    @Option(name: .customLong("mirror-hash"), help: ArgumentHelp(
        "How names are spread over the mirror's backends: jump, etsy or ketama, as --hash (default: jump).", valueName: "mode"))
    var mirrorHash: String?

    @Option(name: .customLong("mirror-sample"), parsing: .unconditional, help: ArgumentHelp(
        "The share of metric names mirrored, in (0, 1]: a name is always or never mirrored, so a mirrored series is complete (default: 1).",
        valueName: "rate"))
    var mirrorSample: String?

    @Argument(help: "Backends, [udp://|tcp://]HOST:PORT[:INSTANCE][=WEIGHT], in routing order (they replace the configuration file's).")
    var backends: [String] = []

    /// How long a reload waits for the resolver before it is refused (start-up waits longer,
    /// `BackendLookup.defaultLimitNanoseconds`: a reload has a configuration to keep running).
    static let reloadResolverLimitNanoseconds: UInt64 = 10_000_000_000

    func validate() throws {
        do { _ = try makeConfiguration() } catch { throw ValidationError("\(error)") }
    }

    /// The options given on the command line, under their configuration-file keys; the ones
    /// not given are `nil`, so that they leave the file's value (or the default) in force.
    func flagSettings() -> ConfigFile {
        var settings = ConfigFile()
        settings.bind = bind
        settings.port = port
        if !listen.isEmpty { settings.listeners = listen.map { ConfigFile.Listener(text: $0) } }
        if !unixSocket.isEmpty { settings.unixSockets = unixSocket.map { ConfigFile.Listener(unix: $0, mode: unixSocketMode) } }
        settings.packetLen = packetLen
        settings.flushInterval = flushInterval
        settings.rcvbuf = rcvbuf
        settings.maxDatagram = maxDatagram
        settings.receiveBuffers = receiveBuffers
        settings.minWait = minWait
        settings.shutdownTimeout = shutdownTimeout
        settings.threads = threads
        settings.cpus = cpus
        settings.reuseportGroup = reusePortGroup
        settings.reuseportSteering = reusePortSteering
        settings.ioBackend = ioBackend?.rawValue
        settings.hash = hash?.rawValue
        health.write(to: &settings)
        settings.admin = admin
        settings.controlSocket = controlSocket
        settings.logLevel = logLevel
        settings.stopDelay = stopDelay
        settings.selfMetricsInterval = selfMetricsInterval
        settings.prefix = prefix
        settings.logFormat = logFormat?.rawValue
        settings.validate = validationMode
        settings.hashKey = hashKey
        settings.metricsPrefix = metricsPrefix
        settings.metricsTags = metricsTags
        settings.sendproto = sendproto
        settings.tcpBackendQueue = tcpBackendQueue
        settings.tcpPort = tcpPort
        settings.tcpMaxConnections = tcpMaxConnections
        settings.tcpIdleTimeout = tcpIdleTimeout
        let mirrorList = mirror.flatMap { $0.split(separator: ",", omittingEmptySubsequences: false).map(String.init) }
        settings.mirror = mirrorList.isEmpty ? nil : mirrorList
        settings.mirrorHash = mirrorHash
        settings.mirrorSample = mirrorSample
        settings.backends = backends.isEmpty ? nil : backends.map { ConfigFile.Backend(address: $0) }
        return settings
    }

    /// The relay configuration: defaults, then the configuration file (`--config`), then the
    /// options given on the command line.
    ///
    /// - Throws: `ConfigFileError` for the file (unreadable, or a bad key or value: path, line,
    ///   key, value, reason), `ConfigurationError` for a bad option.
    func makeConfiguration() throws -> RelayConfiguration {
        try makeConfiguration(file: config.map { path throws(ConfigFileError) in try ConfigFile.load(path: path) })
    }

    /// The relay configuration from `file` (already read) and the command line's options.
    func makeConfiguration(file: ConfigFile?) throws -> RelayConfiguration {
        try ConfigFile.resolve(file: file, flags: flagSettings(), allowedCPUs: WorkerThread.allowedCPUs)
    }

    func run() throws {
        // Before anything is opened: a closed 0, 1 or 2 would go to the relay's first eventfd or
        // socket, and the log and exit report with it.
        let reopened = StandardDescriptors.openMissing()
        // Socket activation (deploy/statsrelay.socket): the passed descriptors are taken before
        // the relay opens any of its own, so a LISTEN_FDS larger than what was passed finds the
        // descriptors past them closed (refused, exit 64), never one of the relay's. A takeover
        // receives its sockets from the running relay instead.
        let passedSockets: [(socket: SocketBox, name: String)]?
        do throws(SystemdListenSockets.Problem) {
            passedSockets = takeover == nil ? try SystemdListenSockets.take() : nil
        } catch {
            printError("\(error)")
            throw ExitCode(64)
        }
        let configuration: RelayConfiguration
        do { configuration = try makeConfiguration() } catch {
            // Checked by `validate()` already: only a file changed since then gets here.
            printError("\(error)")
            throw ExitCode(64)
        }
        // One level for every logger, changed in place by a reload's log-level.
        let levelControl = RelayLogHandler.LevelControl(configuration.logLevel)
        let logFormat = configuration.logFormat
        LoggingSystem.bootstrap { label in RelayLogHandler(label: label, level: levelControl, format: logFormat) }
        let logger = Logger(label: "statsrelay")
        if !reopened.isEmpty {
            logger.notice("descriptors closed at start now hold /dev/null", metadata: [
                "descriptors": "\(reopened.map(String.init).joined(separator: ","))",
            ])
        }
        // Blocked before any thread starts, so only the main thread ever takes them; SIGPIPE
        // and SIGXFSZ are ignored so that a log reader going away, or a log file at its size
        // limit, is a counted write error, not death.
        let signals = SignalWaiter(blocking: SignalWaiter.relaySignals, ignoring: SignalWaiter.ignoredSignals)
        if let refusal = StartupDiagnosis.checkDescriptors(configuration) {
            printError(refusal)
            throw ExitCode(71)
        }
        fitOpenFilesToTCPIngest(configuration, logger: logger)
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
        // A takeover first receives the running relay's listening sockets (it keeps running
        // unchanged if anything fails before `ready`).
        var takeoverClient: TakeoverClient?
        var inherited: InheritedListeners?
        if let takeover {
            do throws(TakeoverClient.Failure) {
                (takeoverClient, inherited) = try TakeoverClient.begin(
                    path: takeover, threads: configuration.threads, listeners: configuration.listenAddresses,
                    tcpListeners: configuration.tcpListenAddresses)
            } catch {
                printError("\(error)")
                throw ExitCode(error.exitStatus)
            }
            logger.notice("takeover: received the running relay's listening sockets", metadata: [
                "control_socket": "\(takeover)", "from_pid": "\(takeoverClient?.predecessor ?? 0)",
                "listeners": "\(inherited?.addresses.map(\.description).joined(separator: ",") ?? "")",
                "tcp_listeners": "\(inherited?.tcpAddresses.map(\.description).joined(separator: ",") ?? "")",
            ])
            if !configuration.tcpListenAddresses.isEmpty && inherited?.tcpSockets.isEmpty != false {
                logger.warning("takeover: the running relay speaks an older protocol and hands over no TCP listener; this relay binds its own beside them, and connections waiting in the old relay's TCP backlogs are reset as it stops")
            }
        } else {
            // Socket activation (deploy/statsrelay.socket): systemd holds the sockets across restarts.
            do throws(ConfigurationError) {
                if let passed = passedSockets {
                    let activated = try SocketActivation.listeners(passed, configuration: configuration)
                    inherited = activated
                    logger.notice("socket activation: relaying on the sockets systemd passed", metadata: [
                        "sockets": "\(passed.count)", "listeners": "\(activated.addresses.map(\.description).joined(separator: ","))",
                        "tcp_listeners": "\(activated.tcpAddresses.map(\.description).joined(separator: ","))",
                        "names": "\(passed.map(\.name).joined(separator: ":"))",
                    ])
                }
            } catch {
                printError("\(error)")
                throw ExitCode(64)
            }
        }
        // Bound before the workers start, so a taken admin port fails before anything relays;
        // it answers 503 `starting` until they run, and stops after the exit report. On a
        // takeover the old relay holds the port until it is done: bound after it (`done`).
        let stopNotice = StopNotice()
        var adminServer: AdminServer?
        var controlServer: ControlServer?
        // Whatever the exit: the path is removed (if still this relay's) and the thread joined.
        defer { controlServer?.stop() }
        if takeoverClient == nil {
            do {
                adminServer = try makeAdminServer(configuration, relay: relay, stopNotice: stopNotice)
                controlServer = try configuration.controlSocket.map { path throws(SystemCallError) in
                    try ControlServer(path: path, relay: relay, logger: logger, readyTimeoutMilliseconds: ControlServer.readyTimeoutFromEnvironment)
                }
            } catch {
                printError("\(error)")
                throw ExitCode(71)
            }
        }
        defer { adminServer?.stop() }
        let facts: WorkerFacts
        do { facts = try relay.start(inheriting: inherited) } catch let error as ConfigurationError {
            takeoverClient?.fail(reason: "\(error)")
            printError("\(error)")
            throw ExitCode(64)  // a backend reaching the port the kernel chose (--port 0)
        } catch let error as Relay.DriverUnavailable {
            takeoverClient?.fail(reason: "\(error)")
            printError("\(error)")
            throw ExitCode(69)  // EX_UNAVAILABLE: --io-backend uring where io_uring cannot run
        } catch let error as SystemCallError {
            takeoverClient?.fail(reason: "\(error)")
            printError(StartupDiagnosis.explain(error, configuration: configuration))
            throw ExitCode(71)
        } catch {
            takeoverClient?.fail(reason: "\(error)")
            printError("\(error)")
            throw ExitCode(71)
        }
        // The workers hold their own descriptors now.
        inherited = nil
        logStartup(facts, configuration: configuration, relay: relay, logger: logger)
        if let takeoverClient {
            do throws(TakeoverClient.Failure) { try completeTakeover(takeoverClient, relay: relay, logger: logger) } catch {
                // The old relay keeps (or may keep) relaying on the sockets: stop on them as
                // they are, still shared, relaying what this relay took meanwhile.
                relay.stop()
                let (counters, _) = relay.wait()
                printError(report(counters, relay: relay, configuration: configuration))
                printError("\(error)")
                throw ExitCode(error.exitStatus)
            }
            do {
                adminServer = try makeAdminServer(configuration, relay: relay, stopNotice: stopNotice)
            } catch {
                logger.error("admin endpoint could not start after the takeover; the relay runs without it", metadata: ["error": "\(error)"])
            }
            do {
                controlServer = try configuration.controlSocket.map { path throws(SystemCallError) in
                    try ControlServer(path: path, relay: relay, logger: logger, readyTimeoutMilliseconds: ControlServer.readyTimeoutFromEnvironment)
                }
            } catch {
                logger.error("control socket could not be bound after the takeover; no further takeover is possible", metadata: ["error": "\(error)"])
            }
        }
        if let controlServer {
            do throws(SystemCallError) {
                try controlServer.start()
                logger.info("control socket on \(controlServer.path) (statsrelay run --takeover \(controlServer.path) upgrades without loss)")
            } catch {
                logger.error("control socket could not start; no takeover is possible", metadata: ["error": "\(error)"])
            }
        }
        if let adminServer {
            logger.info("admin endpoint on http://\(adminServer.address) (GET /metrics, /healthz)")
        }
        let selfMetrics = startSelfMetrics(relay: relay, listen: facts.listen, configuration: configuration, logger: logger)
        // Type=notify: systemd counts the start as done only now, every worker listening.
        let notifier = ServiceNotifier.fromEnvironment(logger: logger)
        notifier?.ready(status: Self.readyStatus(relay))
        let stopSignal = waitForStop(
            signals, relay: relay, configuration: configuration, levelControl: levelControl, notifier: notifier,
            handOver: controlServer?.handedOver, logger: logger)
        let handedOver = stopSignal == Self.handedOverSignal
        stopNotice.announce()
        if handedOver {
            notifier?.stopping(status: "handed over to pid \(controlServer?.successor ?? 0): flushing")
            logger.notice("handed over: the new relay receives on the listening sockets; sending what this one took, then exiting", metadata: [
                "successor_pid": "\(controlServer?.successor ?? 0)",
            ])
        } else {
            notifier?.stopping(status: "stopping (\(SignalWaiter.name(of: stopSignal))): draining and flushing")
            delayStop(after: stopSignal, signals: signals, relay: relay, logger: logger)
        }
        // Before the drain: a report sent during it could arrive after the listener closed.
        selfMetrics?.stop()
        if !handedOver {
            logger.info("stopping: draining received datagrams and flushing batches", metadata: ["signal": "\(SignalWaiter.name(of: stopSignal))"])
        }
        relay.stop()
        let (counters, failures) = relay.wait()
        printError(report(counters, relay: relay, configuration: configuration))
        if handedOver {
            // The successor binds the admin port once told `done`: it must be free by then (the
            // admin socket has no SO_REUSEPORT to share it), or the new relay runs without one.
            adminServer?.stop()
            adminServer = nil
            controlServer?.finishHandOver(counters)
        } else {
            controlServer?.stop()
        }
        if !failures.isEmpty {
            for failure in failures { logger.error("\(failure)") }
            throw ExitCode(70)
        }
        logger.info("stopped")
    }

    /// The line `systemctl status` shows while the relay runs: its listeners and backends as
    /// they are now (a reload may have changed both).
    /// Raises the soft open-files limit towards the hard one as far as TCP ingest's
    /// connections need (one descriptor each, up to `--tcp-max-connections`), and warns when
    /// even the hard limit leaves room for fewer.
    private func fitOpenFilesToTCPIngest(_ configuration: RelayConfiguration, logger: Logger) {
        let host = HostLimits.current()
        let fit = StartupDiagnosis.tcpOpenFiles(configuration, host: host)
        if let soft = fit.raiseTo, HostLimits.setOpenFilesSoftLimit(soft) {
            logger.info("raised the open-files limit for TCP ingest connections", metadata: [
                "from": "\(host.openFiles ?? 0)", "to": "\(soft)", "tcp_max_connections": "\(configuration.tcpMaxConnections)",
            ])
        }
        if let warning = fit.warning { logger.warning("\(warning)") }
    }

    static func readyStatus(_ relay: Relay) -> String {
        // Each listener by its own label, so a Unix or TCP listener is named as what it is.
        "relaying \(relay.listenerLabels.joined(separator: " ")) to \(relay.configurationInForce.backends.count) backends"
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
        let stop = Self.awaitLookup(lookup, signals: signals) { signal in
            logger.notice("ignored: the relay is still resolving its backends' names", metadata: ["signal": "\(SignalWaiter.name(of: signal))"])
        }
        if let stop {
            let unanswered = lookup.unanswered
            lookup.abandon()
            let waited = Double((MonotonicClock.nanoseconds() - started) / 1_000_000) / 1_000
            throw BackendResolutionError(
                backend: unanswered.first ?? configuration.backends[0],
                reason: "stopped by \(SignalWaiter.name(of: stop)) after \(waited)s without an answer from the resolver"
                    + (unanswered.count > 1 ? " (nor for \(unanswered.dropFirst().map(\.description).joined(separator: " ")))" : ""))
        }
        return try lookup.addresses()
    }

    /// Waits until every name of `lookup` has answered or its limit passes, taking signals
    /// meanwhile: a stop (`SIGTERM`, `SIGINT`, `SIGQUIT`) ends the wait and is returned; any other signal
    /// goes to `other` and the wait goes on.
    ///
    /// - Returns: the stop signal that ended the wait, or `nil` when the lookup ended.
    private static func awaitLookup(_ lookup: BackendLookup, signals: SignalWaiter, other: (Int32) -> Void) -> Int32? {
        while !lookup.collect() {
            let left = lookup.remainingNanoseconds
            if left == 0 { break }
            guard let signal = signals.wait(orUntil: lookup.answered, timeoutNanoseconds: left) else { continue }
            if SignalWaiter.isStop(signal) { return signal }
            other(signal)
        }
        return nil
    }

    /// Takes signals on the main thread until one that stops the relay (`SIGTERM`, `SIGINT`,
    /// `SIGQUIT`) arrives, and returns it. The others are answered in the log and never stop
    /// it: `SIGHUP` (reload the configuration file; without `--config`, nothing to reload),
    /// `SIGUSR1` (the live counters), `SignalWaiter.noticedSignals` (ignored).
    ///
    /// A reload is announced to systemd (`notifier`): `RELOADING=1` when it begins, `READY=1`
    /// with the status in force (`readyStatus`) when it ends, whatever its result.
    private func waitForStop(
        _ signals: SignalWaiter, relay: Relay, configuration: RelayConfiguration, levelControl: RelayLogHandler.LevelControl,
        notifier: ServiceNotifier?, handOver: WakeupEvent?, logger: Logger
    ) -> Int32 {
        var reloadAgain = false
        while true {
            let signal: Int32
            if reloadAgain {
                reloadAgain = false
                signal = SIGHUP
            } else if let handOver {
                guard let next = signals.wait(orUntil: handOver, timeoutNanoseconds: nil) else {
                    if handOver.isSignalled { return Self.handedOverSignal }
                    continue
                }
                signal = next
            } else {
                signal = signals.wait()
            }
            let name = SignalWaiter.name(of: signal)
            switch signal {
            case SIGHUP:
                guard let path = config else {
                    logger.notice(
                        "nothing to reload: the relay was started without --config, only its command line; restart it to change settings",
                        metadata: ["signal": "\(name)"])
                    continue
                }
                notifier?.reloading()
                if let stop = reload(path, signals: signals, relay: relay, levelControl: levelControl, logger: logger, again: &reloadAgain) {
                    return stop
                }
                notifier?.ready(status: Self.readyStatus(relay))
            case SIGUSR1:
                logCounters(relay: relay, configuration: configuration, logger: logger)
            case _ where SignalWaiter.isStop(signal):
                return signal
            default:
                logger.notice("ignored: \(name) has no meaning here", metadata: ["signal": "\(name)"])
            }
        }
    }

    /// What `waitForStop` returns when a takeover, not a signal, ends the relay (no signal is 0).
    static let handedOverSignal: Int32 = 0

    /// The admin endpoint, or `nil` with `--admin none`.
    private func makeAdminServer(_ configuration: RelayConfiguration, relay: Relay, stopNotice: StopNotice) throws -> AdminServer? {
        try AdminAddress.parse(configuration.admin).map { address throws(SystemCallError) in
            try AdminServer(
                address: address, endpoint: AdminEndpoint(relay: relay, version: StatsRelayVersion.number, stopNotice: stopNotice),
                avoidingCPUs: relay.workerCPUs)
        }
    }

    /// Tells the old relay this one relays (`ready`) and waits for it to give the sockets up
    /// (`stopping`, then `done`, at most a minute), logging its final counts; only then are the
    /// sockets this relay's (`Relay.ownInheritedListeners`), and the control socket's path and
    /// the admin port free for it.
    ///
    /// - Throws: `TakeoverClient.Failure` (75) when the old relay did not give the sockets up:
    ///   the caller stops without touching them and exits.
    private func completeTakeover(_ client: TakeoverClient, relay: Relay, logger: Logger) throws(TakeoverClient.Failure) {
        let metadata: Logger.Metadata = ["from_pid": "\(client.predecessor)"]
        switch try client.handOver() {
        case .done(let received, let forwarded, let dropped):
            relay.ownInheritedListeners()
            logger.notice("takeover complete: the old relay sent every batch and exited", metadata: metadata.merging([
                "old_lines_received": "\(received)", "old_lines_forwarded": "\(forwarded)", "old_lines_dropped": "\(dropped)",
            ]) { $1 })
        case .endedWithoutCounts:
            relay.ownInheritedListeners()
            logger.warning("takeover complete: the old relay gave the sockets up and ended without reporting its counts", metadata: metadata)
        case .stillStopping:
            // It said `stopping`: it never takes the sockets back, whatever its stop does.
            relay.ownInheritedListeners()
            logger.warning("takeover: the old relay gave the sockets up but did not report its end within 60 s; carrying on", metadata: metadata)
        }
    }

    /// Starts sending the relay's counters into its own stream (`--self-metrics-interval`), or
    /// returns `nil` when it is off. A reporter that cannot start is logged and left off: the
    /// relay itself runs.
    private func startSelfMetrics(relay: Relay, listen: SocketAddress, configuration: RelayConfiguration, logger: Logger) -> SelfMetricsReporter? {
        let interval = configuration.selfMetricsIntervalNanoseconds
        guard interval > 0 else { return nil }
        let target = SelfMetricsReporter.target(for: listen)
        do {
            let reporter = try SelfMetricsReporter(
                relay: relay, prefix: configuration.selfMetricsPrefix, intervalNanoseconds: interval, target: target,
                packetBytes: min(configuration.packetBytes, configuration.maxDatagramBytes), logger: logger)
            try reporter.start()
            logger.info("self-metrics: the relay's counters go to its own listener as StatsD lines", metadata: [
                "prefix": "\(configuration.selfMetricsPrefix)", "interval": "\(DurationParser.format(interval))", "target": "\(target)",
            ])
            return reporter
        } catch {
            logger.error("self-metrics could not start; the relay runs without them", metadata: ["error": "\(error)"])
            return nil
        }
    }

    /// The stop delay (`--stop-delay`, as in force after any reload): after a `SIGTERM`, the
    /// relay keeps relaying for the delay while `/healthz` already answers 503 (`StopNotice`,
    /// announced by the caller), so a balancer takes it out of its pool before the drain.
    ///
    /// A stop asked for again ends the delay at once: a second `SIGTERM`, or `SIGINT` (an
    /// operator pressing Ctrl-C twice wants a faster stop, not a slower one). A first `SIGINT`
    /// has no delay at all: Ctrl-C at a terminal means now. Meanwhile `SIGUSR1` prints the
    /// counters; `SIGHUP` and `SIGUSR2` are logged and ignored (the relay is going away).
    private func delayStop(after signal: Int32, signals: SignalWaiter, relay: Relay, logger: Logger) {
        let delay = relay.configurationInForce.stopDelayNanoseconds
        guard delay > 0, signal == SIGTERM else { return }
        logger.info("out of service: /healthz answers 503 while the relay keeps relaying until the stop delay ends", metadata: [
            "signal": "\(SignalWaiter.name(of: signal))", "stop_delay": "\(DurationParser.format(delay))",
        ])
        let deadline = MonotonicClock.nanoseconds() &+ delay
        // Never signalled: the wait ends on a signal or at the deadline.
        let never = try? WakeupEvent()
        while true {
            let now = MonotonicClock.nanoseconds()
            guard now < deadline else { return }
            guard let never else {
                usleep(UInt32(min(deadline - now, 100_000_000) / 1_000))
                continue
            }
            guard let next = signals.wait(orUntil: never, timeoutNanoseconds: deadline - now) else { continue }
            let name = SignalWaiter.name(of: next)
            switch next {
            case _ where SignalWaiter.isStop(next):
                logger.notice("stop delay cut short: stopping now", metadata: ["signal": "\(name)"])
                return
            case SIGUSR1:
                logCounters(relay: relay, configuration: relay.configurationInForce, logger: logger)
            default:
                logger.notice("ignored: the relay is stopping", metadata: ["signal": "\(name)"])
            }
        }
    }

    /// `SIGUSR1`: the live counters, in the format of the exit report.
    private func logCounters(relay: Relay, configuration: RelayConfiguration, logger: Logger) {
        logger.notice("live counters (each worker publishes its own every 100ms) follow", metadata: ["signal": "SIGUSR1"])
        printError(report(relay.liveCounters(), relay: relay, configuration: configuration), patienceMilliseconds: 0)
    }

    /// `SIGHUP` with `--config`: reads the file again, with the command line's options over it,
    /// validates it whole (backend names resolved while signals are still answered), then
    /// applies what can change while the relay runs (`Relay.reload`) and logs, key by key, what
    /// was applied and what keeps its running value until the next start. A file that cannot
    /// be used changes nothing: its error (key, value, reason) is logged and the reload counted
    /// as failed.
    ///
    /// - Parameter again: set when another `SIGHUP` arrived during this reload (it reloads again).
    /// - Returns: a stop signal that arrived while names were being resolved (the reload is then
    ///   abandoned), else `nil`.
    private func reload(
        _ path: String, signals: SignalWaiter, relay: Relay, levelControl: RelayLogHandler.LevelControl, logger: Logger,
        again: inout Bool
    ) -> Int32? {
        logger.notice("reloading the configuration file", metadata: ["signal": "SIGHUP", "file": "\(path)"])
        func refuse(_ error: any Error, key: String) {
            relay.reloads.recordFailure()
            logger.error("reload refused: the running configuration is unchanged", metadata: [
                "file": "\(path)", "key": "\(key)", "error": "\(error)",
            ])
        }
        let file: ConfigFile
        let candidate: RelayConfiguration
        do {
            file = try ConfigFile.load(path: path)
            candidate = try makeConfiguration(file: file)
        } catch let error as ConfigFileError {
            refuse(error, key: error.keyPath)
            return nil
        } catch let error as ConfigurationError {
            refuse(error, key: error.argument)
            return nil
        } catch {
            refuse(error, key: "")
            return nil
        }
        let addresses: [SocketAddress]
        do {
            let lookup = try BackendLookup(backends: candidate.backends, limitNanoseconds: Self.reloadResolverLimitNanoseconds)
            let stop = Self.awaitLookup(lookup, signals: signals) { signal in
                switch signal {
                case SIGHUP: again = true
                case SIGUSR1: logCounters(relay: relay, configuration: relay.configurationInForce, logger: logger)
                default: logger.notice("ignored: the relay is reloading", metadata: ["signal": "\(SignalWaiter.name(of: signal))"])
                }
            }
            if let stop {
                lookup.abandon()
                relay.reloads.recordFailure()
                logger.notice("reload abandoned: stopping", metadata: ["signal": "\(SignalWaiter.name(of: stop))"])
                return stop
            }
            addresses = try lookup.addresses(keeping: relay.addressesInUse)
        } catch let error as BackendResolutionError {
            let index = candidate.backends.firstIndex(of: error.backend).map { "backends[\($0)]" } ?? "backends"
            refuse(error, key: index)
            return nil
        } catch {
            refuse(error, key: "")
            return nil
        }
        let plan: ConfigFileReload
        do { plan = try relay.reload(to: candidate, addresses: addresses) } catch {
            // Counted by the relay. A backend whose address it refused: say where it is in the file.
            var key = error.argument
            var message = "\(error)"
            if file.backends != nil && flagSettings().backends == nil {
                let located = file.located(error)
                key = located.keyPath
                message = "\(located)"
            }
            logger.error("reload refused: the running configuration is unchanged", metadata: [
                "file": "\(path)", "key": "\(key)", "error": "\(message)",
            ])
            return nil
        }
        levelControl.level = plan.result.logLevel
        let overridden = flagSettings().keysSet.intersection(file.keysSet)
        if !overridden.isEmpty {
            logger.notice("reload: options given on the command line override the file", metadata: [
                "keys": "\(overridden.sorted().joined(separator: ","))",
            ])
        }
        for change in plan.changes {
            if change.applied {
                var metadata: Logger.Metadata = ["key": "\(change.key)", "from": "\(change.running)", "to": "\(change.file)"]
                if let note = change.note { metadata["note"] = "\(note)" }
                logger.info("reload: applied", metadata: metadata)
            } else {
                logger.warning("reload: kept the running value", metadata: [
                    "key": "\(change.key)", "running": "\(change.running)", "file": "\(change.file)", "reason": "\(change.reason ?? "")",
                ])
            }
        }
        if plan.workersNotApplied > 0 {
            // Counted as a failure by the relay: the workers that answered run the new settings.
            logger.error("reload incomplete: some workers did not apply it in time", metadata: [
                "file": "\(path)", "workers_not_applied": "\(plan.workersNotApplied)",
                "applied": "\(plan.applied.map(\.key).joined(separator: ","))",
            ])
            return nil
        }
        logger.notice("configuration reloaded", metadata: [
            "file": "\(path)",
            "applied": "\(plan.applied.map(\.key).joined(separator: ","))",
            "kept": "\(plan.kept.map(\.key).joined(separator: ","))",
        ])
        return nil
    }

    /// The counter report printed at exit and on `SIGUSR1`: the relay's counters, each
    /// backend's health, the configuration reloads by result, and the log's own write errors.
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
        lines.append("statsrelay.config_reloads{result=\"success\"} \(relay.reloads.succeeded)")
        lines.append("statsrelay.config_reloads{result=\"failure\"} \(relay.reloads.failed)")
        lines.append("statsrelay.log_write_errors \(LogWriter.standardError.failedWrites)")
        return lines.joined(separator: "\n")
    }

    /// The start-up log's `min_wait`: `off` (`--min-wait 0`), `unsupported` (a kernel or driver
    /// without it), `250us`, or `250us-2000us` where it adapts to the arrival rate up to that.
    static func minimumWaitDescription(_ floorMicroseconds: UInt32, facts: WorkerFacts) -> String {
        guard floorMicroseconds > 0 else { return "off" }
        guard facts.minimumWait else { return "unsupported" }
        let ceiling = facts.adaptiveWaitCeilingMicroseconds
        return ceiling > floorMicroseconds ? "\(floorMicroseconds)us-\(ceiling)us" : "\(floorMicroseconds)us"
    }

    private func logStartup(_ facts: WorkerFacts, configuration: RelayConfiguration, relay: Relay, logger: Logger) {
        let backends = zip(configuration.backends, relay.backendAddresses).enumerated().map { index, pair in
            let written = (pair.0.transport ?? configuration.sendProtocol) == .tcp ? "tcp://\(pair.0)" : "\(pair.0)"
            return pair.0.host == pair.1.host ? "\(index):\(written)" : "\(index):\(written)=\(pair.1)"
        }
        // The TCP ingest listeners by their label (`tcp:ADDR:PORT`), after the datagram ones.
        let listening = facts.listeners.map(\.description) + facts.tcpListeners.map { "tcp:\($0)" }
        logger.info("listening on \(listening.joined(separator: ", "))", metadata: [
            "backends": "\(backends.joined(separator: " "))",
            "packet_len": "\(configuration.packetBytes)",
            "flush_interval": "\(DurationParser.format(configuration.flushIntervalNanoseconds))",
            "max_datagram": "\(configuration.maxDatagramBytes)",
            "rcvbuf_requested": "\(configuration.receiveBufferBytes)",
            "rcvbuf_obtained": "\(facts.receiveBufferBytes)",
            "threads": "\(configuration.threads)",
            "cpus": "\(relay.workerCPUs.map(String.init).joined(separator: ","))",
            "reuseport_steering": "\(configuration.reusePortSteering.rawValue)",
            "kernel": "\(KernelSupport.release)",
            "ring_flags": "\(facts.ringFlags.joined(separator: "|"))",
            "min_wait": "\(Self.minimumWaitDescription(configuration.minimumWaitMicroseconds, facts: facts))",
            "receive_buffers": "\(facts.receiveBuffers)x\(facts.receiveBufferSize)",
            "send_slots": "\(facts.sendSlots)",
            "health_check": "\(configuration.healthCheck.rawValue)",
            "on_backend_down": "\(configuration.onBackendDown.rawValue)",
            "hash": "\(configuration.hashMode.rawValue)",
            "validate": "\(configuration.validation.rawValue)",
            "hash_key": "\(configuration.hashKey.rawValue)",
            "metrics_prefix": "\(configuration.rewrite.prefix)",
            "metrics_tags": "\(configuration.rewrite.tags)",
            "tcp_reads": "\(facts.tcpListeners.isEmpty ? "none" : facts.tcpReads.rawValue)",
        ])
        if let mirror = relay.mirrorPool {
            let targets = zip(mirror.pool.backends, mirror.pool.addresses).enumerated().map { index, pair in
                pair.0.host == pair.1.host ? "\(index):\(pair.0)" : "\(index):\(pair.0)=\(pair.1)"
            }
            logger.info("mirroring to \(mirror.count) backends", metadata: [
                "mirror": "\(targets.joined(separator: " "))",
                "mirror_hash": "\(mirror.pool.hashMode.rawValue)",
                "mirror_sample": "\(mirror.sample.rate)",
            ])
        }
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
extension RelayLogHandler.Format: ExpressibleByArgument {}
