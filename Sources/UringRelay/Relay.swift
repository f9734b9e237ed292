import RelayKernel
import Dispatch
import Logging
import Synchronization

/// The relay: resolves the configuration, starts one pinned worker thread per CPU slot, stops
/// them on request and gathers their counters.
///
/// Every worker has its own ring, listening socket (`SO_REUSEPORT` on the same address),
/// buffers, batches and backend sockets; they share only the read-only routing table.
public final class Relay: @unchecked Sendable {  // `driver` and `driverReason` are written once, in `start`, before any worker runs
    /// The validated configuration.
    public let configuration: RelayConfiguration
    /// The backends' resolved addresses, in routing order.
    public let backendAddresses: [SocketAddress]
    /// The health view and addresses the workers route by.
    public let routing: RoutingState
    /// The mirror pool (`--mirror`), resolved once at start, fixed for the process's life.
    public let mirrorPool: MirrorPool?
    /// Checks backends and re-resolves their names.
    public let monitor: HealthMonitor
    /// How the configuration reloads went (`reload`), for `/metrics`.
    public let reloads = ConfigFileReloadCounts()
    /// The configuration in force: `configuration` as started, then as each reload left it.
    private let inForce: Mutex<RelayConfiguration>
    private let logger: Logger
    private let state = Mutex(State())

    private struct State: ~Copyable {
        /// Each started worker's control channel, in worker order.
        var controls: [WorkerControl] = []
        var threads: [WorkerThreadHandle] = []
        var counters: [RelayCounters] = []
        var boards: [CounterBoard] = []
        var failures: [String] = []
        /// The listeners' addresses with the ports bound (after `start`), as configured, and
        /// their ids, in the same order.
        var listeners: [SocketAddress] = []
        var configuredListeners: [SocketAddress] = []
        var listenerIDs: [UInt32] = []
        /// The TCP ingest listeners' addresses with the ports bound (after `start`), as
        /// configured, and their ids, in the same order.
        var tcpListeners: [SocketAddress] = []
        var configuredTCPListeners: [SocketAddress] = []
        var tcpListenerIDs: [UInt32] = []
        /// The id the next listener added by a reload takes.
        var nextListenerID: UInt32 = 0
        /// The socket file of each Unix datagram listener, by listener id: removed when a
        /// reload removes the listener and at exit, unless a successor took the sockets over.
        var unixFiles: [UInt32: UnixListenerFile] = [:]
        var stopping = false
        /// Set once `start` has succeeded: every worker runs and `driver` is final.
        var started = false
    }

    /// Decides whether the io_uring driver can run here: `nil` when it can, else the reason.
    public typealias UringProbe = @Sendable (_ settings: WorkerSettings) -> UringProbeFailure?

    /// The driver the workers run and, when `auto` chose the portable one, why.
    public private(set) var driver: IOBackendChoice = .uring
    /// Why the io_uring driver is not used, when it is not.
    public private(set) var driverReason: String?
    private let uringProbe: UringProbe
    /// The budget every worker's held packets share.
    private let holdBudget: HoldBudget
    /// Logs failed sends, rate-limited, from the published counters.
    private let sendFailures: SendFailureWatch
    /// Every worker's copy of every listening socket, for a takeover (`ControlServer`).
    public let listenerRegistry: ListenerRegistry
    /// The sockets taken over from the previous process, while `start` uses them.
    private var inherited: InheritedListeners?

    /// Validates `configuration` and resolves every backend, waiting for the resolver at most
    /// `resolverLimitNanoseconds` (the lookups run concurrently: `BackendLookup`).
    ///
    /// - Parameter uringProbe: decides whether io_uring can run (injectable for tests).
    /// - Throws: `ConfigurationError` naming the bad setting or backend (one whose address is
    ///   unusable, another backend's, or reaches the relay's own listener);
    ///   `BackendResolutionError` for a name without an address; `SystemCallError` when an
    ///   eventfd cannot be created.
    public convenience init(
        configuration: RelayConfiguration, logger: Logger,
        resolver: @escaping HealthMonitor.Resolver = BackendResolver.system,
        resolverLimitNanoseconds: UInt64 = BackendLookup.defaultLimitNanoseconds,
        uringProbe: @escaping UringProbe = { settings in KernelSupport.uringDriverFailure(sizing: settings.ringSizing, payloadBytes: settings.maxDatagramBytes) }
    ) throws {
        try configuration.validate()
        let lookup = try BackendLookup(backends: configuration.backends, resolver: resolver, limitNanoseconds: resolverLimitNanoseconds)
        let addresses = try lookup.wait()
        try self.init(configuration: configuration, addresses: addresses, logger: logger, resolver: resolver, uringProbe: uringProbe)
    }

    /// Validates `configuration` with its backends' addresses already resolved (by a
    /// `BackendLookup` its caller waited for, as the command does while answering signals).
    ///
    /// - Parameters:
    ///   - addresses: one per backend, in routing order.
    ///   - resolver: looks names up again at each `--dns-refresh`.
    /// - Throws: as the other initialiser, but never `BackendResolutionError`.
    public init(
        configuration: RelayConfiguration, addresses: [SocketAddress], logger: Logger,
        resolver: @escaping HealthMonitor.Resolver = BackendResolver.system,
        uringProbe: @escaping UringProbe = { settings in KernelSupport.uringDriverFailure(sizing: settings.ringSizing, payloadBytes: settings.maxDatagramBytes) }
    ) throws {
        try configuration.validate()
        precondition(addresses.count == configuration.backends.count, "one address per backend")
        // The listeners' ports are known now unless 0 (then `start` checks once bound).
        try BackendAddressCheck.verify(
            backends: configuration.backends, addresses: addresses, listeners: configuration.listenAddresses,
            tcpListeners: configuration.tcpListenAddresses, sendProtocol: configuration.sendProtocol,
            healthCheck: (configuration.healthCheck, configuration.healthCheckPort))
        self.configuration = configuration
        let cpus = configuration.cpus ?? WorkerThread.allowedCPUs
        assignedCPUs = (0..<configuration.threads).map { cpus.isEmpty ? nil : cpus[$0 % cpus.count] }
        inForce = Mutex(configuration)
        listenerRegistry = ListenerRegistry(keepsCopies: configuration.controlSocket != nil)
        self.backendAddresses = addresses
        self.logger = logger
        self.uringProbe = uringProbe
        sendFailures = SendFailureWatch(logger: logger)
        holdBudget = HoldBudget(
            totalBytes: configuration.holdBytes, replayBytesPerSecond: configuration.replayBytesPerSecond,
            workers: configuration.threads)
        routing = RoutingState(pool: BackendPool(
            backends: configuration.backends, addresses: addresses, hashMode: configuration.hashMode, policy: configuration.onBackendDown))
        if configuration.mirror.isEmpty {
            mirrorPool = nil
        } else {
            // Resolved once, here: the mirror is fixed for the process's life (no DNS refresh).
            let mirrorAddresses = try BackendLookup(backends: configuration.mirror, resolver: resolver).wait()
            try BackendAddressCheck.verify(
                mirror: configuration.mirror, addresses: mirrorAddresses, listeners: configuration.listenAddresses,
                tcpListeners: configuration.tcpListenAddresses, sendProtocol: configuration.sendProtocol)
            mirrorPool = MirrorPool(
                backends: configuration.mirror, addresses: mirrorAddresses, hashMode: configuration.mirrorHashMode,
                rate: configuration.mirrorSample)
        }
        do throws(Errno) {
            monitor = try HealthMonitor(configuration: configuration, routing: routing, logger: logger, resolver: resolver)
        } catch {
            throw SystemCallError("eventfd", "health monitor", error)
        }
    }

    /// The first address the workers listen on, with the port actually bound (after `start`).
    public var listenAddress: SocketAddress? { state.withLock { $0.listeners.first } }

    /// Every address the workers listen on, in listener-id order, with the ports actually
    /// bound (after `start`; the configured ones before).
    public var listenAddresses: [SocketAddress] {
        let bound = state.withLock { $0.listeners }
        return bound.isEmpty ? configurationInForce.listenAddresses : bound
    }

    /// Every listener's label, as the counters' `listener` label and `/status` name it
    /// (`udp:127.0.0.1:8125`, `unixgram:/run/statsrelay.sock`, `tcp:0.0.0.0:8125`): the datagram
    /// listeners, then the TCP ones. What the systemd status line names.
    public var listenerLabels: [String] { listenAddresses.map(WorkerSetup.label) + tcpListenAddresses.map(TCPIngest.label) }

    /// Why the relay could not start a driver it was told to use (`--io-backend uring` where
    /// io_uring cannot run): exit status 69 (`EX_UNAVAILABLE`).
    public struct DriverUnavailable: Error, CustomStringConvertible, Sendable {
        /// What failed and what an operator can do about it.
        public var reason: String
        public var description: String { "io_backend=uring is unavailable: \(reason)" }
    }

    /// Starts every worker and returns once all are receiving, with the first worker's facts.
    ///
    /// Picks the driver first (`--io-backend`): `auto` probes io_uring with the settings the
    /// workers will use and falls back to the portable driver on any failure. Workers start
    /// one after another so that, for port 0, the others join the port the first one was given.
    /// - Throws: `SystemCallError` when another socket already holds the listening address (unless
    ///   `reusePortGroup`); `DriverUnavailable` when `uring` was demanded and cannot run;
    ///   `SystemCallError` from the first worker that could not start (the ones already
    ///   started are stopped and joined first).
    ///
    /// - Parameter inheriting: the listening sockets taken over from the previous process
    ///   (`TakeoverClient`): the workers relay on them instead of binding (no exclusive-bind
    ///   probe). They count as shared with that process, from the start on and until
    ///   `ownInheritedListeners()`: a failed start, or a stop before the previous process has
    ///   given them up, stops the workers without touching them.
    public func start(inheriting: InheritedListeners? = nil) throws -> WorkerFacts {
        if let inheriting {
            precondition(inheriting.workers == configuration.threads && inheriting.addresses.count == configuration.listenAddresses.count)
            precondition(inheriting.tcpSockets.isEmpty || inheriting.tcpAddresses.count == configuration.tcpListenAddresses.count)
            inherited = inheriting
            listenerRegistry.shareListeners(true)
            if inheriting.heldElsewhere { listenerRegistry.holdElsewhere() }
        }
        // The workers hold their duplicates; the previous process still holds the originals,
        // and may relay on them until it says it has given them up (`ownInheritedListeners`).
        defer { inherited = nil }
        let config = configuration
        let listen = inheriting?.addresses ?? config.listenAddresses
        if !config.reusePortGroup && inheriting == nil {
            // Every worker binds with SO_REUSEPORT; without this check a second relay, or any
            // stray SO_REUSEPORT socket, on the port would take a share of the traffic unseen.
            for address in listen where address.port != 0 { try UDPSocket.probeExclusive(address) }
            for address in config.tcpListenAddresses where address.port != 0 { try TCPListenSocket.probeExclusive(address) }
        } else if !config.reusePortGroup, let inheriting, inheriting.heldElsewhere, inheriting.tcpSockets.isEmpty {
            // systemd passed the datagram sockets alone: the relay binds its TCP listeners, and
            // nobody else may hold their ports. (A takeover from an older relay, which hands over
            // no TCP listener, binds beside the old relay's on purpose: no probe then.)
            for address in config.tcpListenAddresses where address.port != 0 { try TCPListenSocket.probeExclusive(address) }
        }
        let shared: [Int: SocketBox]
        do {
            shared = try bindUnixListeners(listen, inherited: inheriting != nil, setsInheritedModes: inheriting?.heldElsewhere == false)
        } catch {
            removeUnixFiles()
            throw error
        }
        var startedWorkers = false
        // A failed start leaves no socket file behind (unless the sockets are another's).
        defer { if !startedWorkers { removeUnixFiles() } }
        var probeSettings = WorkerSettings(configuration: config, listeners: listen, routing: routing, holdBudget: holdBudget)
        probeSettings.mirror = mirrorPool
        switch config.ioBackend {
        case .portable:
            driver = .portable
            driverReason = "chosen with --io-backend portable"
        case .uring, .auto:
            if let failure = uringProbe(probeSettings) {
                let reason = Self.explain(failure, configuration: config)
                if config.ioBackend == .uring { throw DriverUnavailable(reason: reason) }
                driver = .portable
                driverReason = reason
            } else {
                driver = .uring
            }
        }
        var facts: WorkerFacts
        do {
            facts = try startWorkers(driver: driver, listen: listen, shared: shared)
        } catch let error as SystemCallError where driver == .uring && error.operation.hasPrefix("io_uring") {
            // The probe's ring passed, but every worker pins its own ring and buffer ring (the
            // memlock limit is per user, and the probe's ring is released asynchronously): a
            // worker's io_uring set-up can still fail. `auto` falls back; `uring` cannot run.
            let failure = UringProbeFailure(
                operation: error.target.isEmpty ? error.operation : "\(error.operation) \(error.target)", errno: error.errno)
            let reason = Self.explain(failure, configuration: config)
            if config.ioBackend == .uring { throw DriverUnavailable(reason: reason) }
            driver = .portable
            driverReason = reason
            facts = try startWorkers(driver: .portable, listen: listen, shared: shared)
        }
        if listen.contains(where: { $0.port == 0 }) || config.tcpListenAddresses.contains(where: { $0.port == 0 }) {
            // The kernel chose a port: only now can a backend be found to reach it.
            do throws(ConfigurationError) {
                try verifyNoLoop(
                    backends: config.backends, addresses: backendAddresses, listeners: facts.listeners,
                    tcpListeners: facts.tcpListeners, nextSendProtocol: config.sendProtocol,
                    healthCheck: (config.healthCheck, config.healthCheckPort))
            } catch {
                stopAndForgetWorkers()
                throw error
            }
        }
        if config.ioBackend == .portable {
            // The operator's choice, not a fallback: nothing to warn about.
            logger.info("io_backend=\(driver.rawValue) reason=\"\(driverReason ?? "")\"")
        } else if let driverReason {
            logger.warning("io_backend=\(driver.rawValue) reason=\"\(driverReason)\"")
        } else {
            logger.info("io_backend=\(driver.rawValue)")
        }
        if steersByCPU && !KernelSupport.selectsReusePortByIncomingCPU(release: KernelSupport.release) {
            // The option is taken either way; an older selection hashes past it.
            logger.warning("--reuseport-steering cpu may not steer on this kernel: the selection by SO_INCOMING_CPU came with Linux 6.2 (stable 6.1.2, 6.0.16, 5.15.86); without it the kernel's hash picks each datagram's worker", metadata: ["kernel": "\(KernelSupport.release)"])
        }
        do throws(Errno) { try monitor.start(listeners: .init(udp: facts.listeners, tcp: facts.tcpListeners)) } catch {
            stopAndJoin()
            throw SystemCallError("pthread_create", "health monitor", error)
        }
        sendFailures.start { [weak self] in self?.liveCounters() ?? RelayCounters(backends: []) }
        state.withLock { $0.started = true }
        startedWorkers = true
        return facts
    }

    /// Makes the listening sockets inherited from a takeover this relay's own, once the previous
    /// process has given them up (`TakeoverClient.handOver`): from now on a stop tears them down
    /// as it would sockets it bound (connected to themselves, TCP listeners shut down, Unix files
    /// removed). Sockets another process holds for good (socket activation) stay shared.
    ///
    /// - Warning: only after the previous process has said it gave them up: until then both
    ///   processes relay on the same sockets, and a tear-down here would cut the other one off.
    public func ownInheritedListeners() {
        listenerRegistry.shareListeners(false)
    }

    /// Starts every worker on `driver`, one after another so that, for port 0, the others join
    /// the port the first one was given.
    ///
    /// - Returns: the first worker's facts.
    /// - Throws: `SystemCallError` from the first worker that could not start; the ones already
    ///   started are then stopped and joined, and forgotten, so workers can be started again.
    private func startWorkers(driver: IOBackendChoice, listen configured: [SocketAddress], shared: [Int: SocketBox]) throws -> WorkerFacts {
        let config = configuration
        var listen = configured
        // Inherited TCP listening sockets are bound already: their addresses, ports included.
        var tcpListen = inherited.map { $0.tcpAddresses.isEmpty ? config.tcpListenAddresses : $0.tcpAddresses } ?? config.tcpListenAddresses
        let cpus = assignedCPUs
        var firstFacts: WorkerFacts?
        for index in 0..<config.threads {
            let cpu = cpus[index]
            var workerSettings = WorkerSettings(configuration: config, listeners: listen, routing: routing, holdBudget: holdBudget)
            workerSettings.incomingCPU = steersByCPU ? cpu : nil
            workerSettings.mirror = mirrorPool
            workerSettings.tcpListeners = tcpListen
            workerSettings.handOver = WorkerHandOver(
                worker: index, registry: listenerRegistry, inherited: inherited?.sockets(worker: index),
                sharedByWorkers: inherited?.sharedByWorkers ?? [], inheritedDropBaselines: inherited?.dropBaselines?.map { $0[index] },
                shared: shared, inheritedTCP: inherited?.tcpSockets(worker: index))
            let settings = workerSettings
            let board = settings.board
            let control: WorkerControl
            do throws(Errno) { control = try WorkerControl() } catch {
                stopAndForgetWorkers()
                throw SystemCallError("eventfd", "", error)
            }
            let started = StartupSignal()
            let logger = self.logger
            let thread: WorkerThread
            do throws(Errno) {
                thread = try WorkerThread(name: "statsrelay-w\(index)", cpu: cpu) { [self] pinning in
                    var settings = settings
                    if let pinning {
                        logger.warning("worker could not be pinned", metadata: ["worker": "\(index)", "cpu": "\(cpu ?? -1)", "error": "\(pinning.operatorDescription)"])
                        // Its sockets would take another CPU's datagrams: the hash places them.
                        settings.incomingCPU = nil
                    }
                    // A worker that never started has nothing counted: its start-up signal carried the error.
                    guard let exit = Self.runWorker(driver: driver, settings: settings, control: control, started: started) else { return }
                    if let error = exit.failure {
                        logger.critical("worker stopped on a driver failure", metadata: ["worker": "\(index)", "error": "\(error)"])
                    }
                    // A worker that failed keeps what it counted in the exit report.
                    self.state.withLock { state in
                        state.counters.append(exit.counters)
                        if let error = exit.failure { state.failures.append("worker \(index): \(error)") }
                    }
                }
            } catch {
                stopAndForgetWorkers()
                throw SystemCallError("pthread_create", "worker \(index)", error)
            }
            let handle = WorkerThreadHandle(thread)
            state.withLock {
                $0.controls.append(control)
                $0.threads.append(handle)
                $0.boards.append(board)
            }
            switch started.wait() {
            case .success(let facts):
                if index == 0 {
                    listen = facts.listeners
                    // Port 0: the other workers join the ports the first one was given.
                    tcpListen = facts.tcpListeners
                    firstFacts = facts
                    state.withLock {
                        $0.listeners = facts.listeners
                        $0.configuredListeners = configured
                        $0.listenerIDs = facts.listeners.indices.map { UInt32($0) }
                        $0.tcpListeners = facts.tcpListeners
                        $0.configuredTCPListeners = config.tcpListenAddresses
                        $0.tcpListenerIDs = facts.tcpListeners.indices.map { UInt32(facts.listeners.count + $0) }
                        // The TCP listeners take the ids after the others' (`WorkerSettings.tcpListenerID`).
                        $0.nextListenerID = UInt32(facts.listeners.count + facts.tcpListeners.count)
                    }
                }
            case .failure(let error):
                stopAndForgetWorkers()
                throw error
            }
        }
        return firstFacts!
    }

    /// Binds each Unix datagram listener of `listen` once, for every worker to read a duplicate
    /// of (`WorkerHandOver.shared`), replacing a stale socket file; or, for listeners taken
    /// over (`inherited`), only notes their files, to be removed at exit.
    ///
    /// - Returns: the sockets by listener index.
    /// - Throws: `SystemCallError` for the first that cannot be bound (a live relay there).
    private func bindUnixListeners(
        _ listen: [SocketAddress], inherited: Bool, setsInheritedModes: Bool
    ) throws(SystemCallError) -> [Int: SocketBox] {
        var shared: [Int: SocketBox] = [:]
        for (index, address) in listen.enumerated() {
            guard let path = address.unixPath else { continue }
            if inherited {
                guard let file = UnixListenerFile.current(at: path) else { continue }
                state.withLock { $0.unixFiles[UInt32(index)] = file }
                // A takeover: the file is this relay's now, with this relay's mode (systemd's
                // sockets keep the unit's SocketMode=).
                if setsInheritedModes {
                    do throws(SystemCallError) { try file.setMode(configuration.unixSocketMode(for: path)) } catch {
                        logger.warning("the taken-over Unix listener keeps its old mode", metadata: ["error": "\(error)"])
                    }
                }
                continue
            }
            let socket = try UDPSocket.listening(
                unixPath: path, mode: configuration.unixSocketMode(for: path), receiveBufferBytes: configuration.receiveBufferBytes)
            if let file = UnixListenerFile.current(at: path) { state.withLock { $0.unixFiles[UInt32(index)] = file } }
            shared[index] = SocketBox(socket)
        }
        return shared
    }

    /// Removes the socket file of every Unix datagram listener (at exit, or after a failed
    /// start), unless another process holds the sockets (a successor took them over: the
    /// files are its own now).
    private func removeUnixFiles() {
        guard !listenerRegistry.listenersShared else { return }
        let files = state.withLock { state in
            defer { state.unixFiles = [:] }
            return Array(state.unixFiles.values)
        }
        for file in files { file.removeIfOwned() }
    }

    /// Stops and joins the workers started so far and forgets them (the health monitor, not
    /// yet started, is left alone so that it can still start).
    private func stopAndForgetWorkers() {
        let (controls, threads) = state.withLock { ($0.controls, $0.threads) }
        for control in controls { control.send(.stop) }
        for thread in threads { thread.join() }
        listenerRegistry.forgetAll()
        state.withLock { state in
            state.controls = []
            state.threads = []
            state.boards = []
            // What the stopped workers relayed stays counted.
            state.failures = []
            state.listeners = []
        }
    }

    /// The probe's failure, then its cause and fix where known (`StartupDiagnosis`).
    private static func explain(_ failure: UringProbeFailure, configuration: RelayConfiguration) -> String {
        guard let errno = failure.errno,
              let advice = StartupDiagnosis.explainIOUring(errno, configuration: configuration) else { return failure.description }
        return "\(failure.description); \(advice)"
    }

    /// Opens a worker's driver on the calling (worker) thread, reports its start, runs it.
    ///
    /// - Returns: how it ended (its counters, and its failure if it failed running), or `nil`
    ///   if it never started.
    static func runWorker(
        driver: IOBackendChoice, settings: WorkerSettings, control: WorkerControl, started: StartupSignal
    ) -> WorkerExit? {
        // However the worker ends (stopped, failed to start, failed running), a command sent to
        // it from then on, or still queued, is refused at once: nothing waits for it.
        defer { control.close() }
        switch driver {
        case .portable: return run(PortableDriver.self, settings: settings, control: control, started: started)
        case .uring, .auto: return run(IOUringDriver.self, settings: settings, control: control, started: started)
        }
    }

    /// Opens one worker on driver `Driver`, reports its start, runs it (see `runWorker`). A
    /// start that fails has released what it opened, in its order, before the report.
    private static func run<Driver: IODriver & ~Copyable>(
        _: Driver.Type, settings: WorkerSettings, control: WorkerControl, started: StartupSignal
    ) -> WorkerExit? {
        let worker: WorkerLoop<Driver>
        do throws(SystemCallError) { worker = try WorkerLoop<Driver>(settings: settings, control: control) } catch {
            started.report(.failure(error))
            return nil
        }
        started.report(.success(worker.facts))
        return worker.run()
    }

    /// Replaces the backends while the relay runs: every worker sends what it batched for the
    /// old pool, then routes by the new one from a turn boundary on (no line lost or sent
    /// twice; each line routed wholly by one pool). Backends that stay keep their counters.
    ///
    /// The names are looked up concurrently (`BackendLookup`), waiting at most
    /// `resolverLimitNanoseconds`.
    /// - Throws: `ConfigurationError` for an empty or duplicated list, or a backend whose address
    ///   is unusable or reaches this relay's listener; `BackendResolutionError` for a name
    ///   without an address; the running pool is then left as it is.
    public func replaceBackends(
        _ backends: [BackendAddress],
        resolver: @escaping HealthMonitor.Resolver = BackendResolver.system,
        resolverLimitNanoseconds: UInt64 = BackendLookup.defaultLimitNanoseconds
    ) throws {
        var candidate = configuration
        candidate.backends = backends
        try candidate.validate()
        let addresses = try BackendLookup(backends: backends, resolver: resolver, limitNanoseconds: resolverLimitNanoseconds)
            .wait(keeping: addressesInUse)
        let running = configurationInForce
        try BackendAddressCheck.verify(
            backends: backends, addresses: addresses, listeners: listenAddresses,
            tcpListeners: tcpListenAddresses, sendProtocol: running.sendProtocol,
            healthCheck: (running.healthCheck, running.healthCheckPort))
        logAddressChanges(from: routing.current, to: backends, addresses)
        routing.replaceBackends(backends, addresses: addresses)
        // The monitor sleeps until its next check or refresh, never with checks off and no
        // name to look up: its status follows the new pool now.
        monitor.wake()
    }

    /// Checks `backends` at `addresses`, and the running mirror, against `listeners` and
    /// `tcpListeners` (`BackendAddressCheck.verify`): a reload's candidate, or the pool at start
    /// once the listeners' ports are bound.
    ///
    /// A backend written without a scheme is checked as the workers send to it, with the
    /// running `--sendproto` (a restart key), and also with `nextSendProtocol`, the one the
    /// file gives for the next start, when that differs. The mirror (fixed for the process's
    /// life) is checked with the running one, since a reload may add a listener it reaches.
    /// `healthCheck` is the check the backends will be probed with (a reload applies the file's).
    /// - Throws: `ConfigurationError` naming the backend (argument `backend`, or `--mirror`).
    private func verifyNoLoop(
        backends: [BackendAddress], addresses: [SocketAddress], listeners: [SocketAddress], tcpListeners: [SocketAddress],
        nextSendProtocol: BackendTransport, healthCheck: (mode: HealthCheckMode, port: UInt16?)
    ) throws(ConfigurationError) {
        let running = configurationInForce.sendProtocol
        for sendProtocol in running == nextSendProtocol ? [running] : [running, nextSendProtocol] {
            try BackendAddressCheck.verify(
                backends: backends, addresses: addresses, listeners: listeners, tcpListeners: tcpListeners,
                sendProtocol: sendProtocol, healthCheck: healthCheck)
        }
        guard let mirrorPool else { return }
        try BackendAddressCheck.verify(
            mirror: mirrorPool.pool.backends, addresses: mirrorPool.pool.addresses, listeners: listeners,
            tcpListeners: tcpListeners, sendProtocol: running)
    }

    /// The TCP ingest listeners' addresses, with the ports bound once started (the configured
    /// ones before).
    public var tcpListenAddresses: [SocketAddress] {
        let bound = state.withLock { $0.tcpListeners }
        return bound.isEmpty ? configurationInForce.tcpListenAddresses : bound
    }

    /// The configuration in force: as started, with what each reload applied.
    public var configurationInForce: RelayConfiguration { inForce.withLock { $0 } }

    /// Reloads: applies what of `candidate` can change while the relay runs, keeps the rest at
    /// its running value (`ConfigFileReload` says which and why), and counts the reload.
    ///
    /// Applied: backends added, removed, reordered or relabelled, and the down-policy, as one
    /// pool change every worker takes at a turn boundary after sending the old pool's batches
    /// (no line lost or sent twice, each routed wholly by one pool); the packet length and the
    /// flush interval, sent to every worker's control channel (`WorkerCommand.applySettings`);
    /// the health checks and the name refresh, taken by the monitor between two rounds. The log
    /// level is the caller's to apply (`result.logLevel`).
    ///
    /// The reload counts as a success only once every worker has applied it at a turn boundary,
    /// awaited at most `workerAnswerNanoseconds`: a worker that stopped, or did not answer in
    /// time, makes it a failure (`result` is then in force in the workers that did apply it, and
    /// `workersNotApplied` says how many did not).
    /// - Parameters:
    ///   - candidate: the new configuration, validated (`RelayConfiguration.validate`).
    ///   - addresses: its backends' addresses, resolved (a `BackendLookup` the caller waited for).
    /// - Throws: `ConfigurationError` for a backend whose address is unusable, another backend's
    ///   or reaching this relay's listener (the running one, or the file's, which applies at the
    ///   next start), or for listeners changed (UDP, Unix or TCP) while they come from systemd
    ///   (socket activation) or a takeover is under way; nothing is changed then, and the
    ///   failure is counted.
    @discardableResult
    public func reload(to candidate: RelayConfiguration, addresses: [SocketAddress]) throws(ConfigurationError) -> ConfigFileReload {
        do throws(ConfigurationError) {
            try candidate.validate()
            precondition(addresses.count == candidate.backends.count, "one address per backend")
            var listeners = listenAddresses
            for next in candidate.listenAddresses where next.port != 0 && !listeners.contains(next) {
                listeners.append(next)
            }
            try verifyNoLoop(
                backends: candidate.backends, addresses: addresses, listeners: listeners,
                tcpListeners: tcpListenAddresses + candidate.tcpListenAddresses, nextSendProtocol: candidate.sendProtocol,
                healthCheck: (candidate.healthCheck, candidate.healthCheckPort))
        } catch {
            reloads.recordFailure()
            throw error
        }
        // A reload that changes the listeners has the set to itself until applied: a takeover
        // under way would not hand over a listener added after its offer, and would hand over
        // one closed under the new relay.
        let wanted = candidate.listenAddresses
        let (running, runningTCP) = state.withLock { ($0.configuredListeners, $0.configuredTCPListeners) }
        var wantedTCPConfiguration = configurationInForce
        wantedTCPConfiguration.tcpListeners = candidate.tcpListeners
        let wantedTCP = wantedTCPConfiguration.tcpListenAddresses
        let changesListeners = !Self.listenerDifference(running: running, wanted: wanted).isEmpty
            || !Self.listenerDifference(running: runningTCP, wanted: wantedTCP).isEmpty
        // systemd's sockets (socket activation) are the socket unit's: stopping one would connect
        // it to itself (or remove its file) for every later start, and one the relay bound
        // itself would have no socket at the next start. Nothing of such a reload applies.
        if changesListeners && listenerRegistry.isHeldElsewhere {
            reloads.recordFailure()
            throw ConfigurationError(
                argument: "listeners", value: (wanted.map(\.description) + wantedTCP.map { "tcp:\($0)" }).joined(separator: ","),
                reason: "the listeners come from systemd's socket unit (socket activation): a reload cannot change them; change the .socket unit's ListenDatagram=/ListenStream= and the configuration, then restart the socket unit and the service")
        }
        if changesListeners && !listenerRegistry.takeListenerSet(for: .reload) {
            reloads.recordFailure()
            throw ConfigurationError(
                argument: "listeners", value: wanted.map(\.description).joined(separator: ","),
                reason: "a takeover is under way: the listeners cannot change now (the new relay reads its own configuration; reload it after the takeover, or this relay if the takeover fails)")
        }
        defer { if changesListeners { listenerRegistry.releaseListenerSet(from: .reload) } }
        let modesChanged: [(file: UnixListenerFile, previous: UInt32)]
        do throws(ConfigurationError) { modesChanged = try changeUnixModes(to: candidate) } catch {
            reloads.recordFailure()
            throw error
        }
        // Nothing of a failed reload stays in force: the modes go back (and the files of Unix
        // listeners bound for it go, `undoUnix(removing:)`).
        func undoUnix(removing added: ListenerChange? = nil) {
            for (file, previous) in modesChanged.reversed() { try? file.setMode(previous) }
            for listener in added?.added ?? [] { listener.file?.removeIfOwned() }
            reloads.recordFailure()
        }
        let listenerChange: ListenerChange
        do throws(ConfigurationError) { listenerChange = try prepareListeners(wanted, modes: candidate) } catch {
            undoUnix()
            throw error
        }
        let tcpChange: TCPListenerChange
        do throws(ConfigurationError) {
            tcpChange = try prepareTCPListeners(wantedTCP, skippingIDs: listenerChange.added.count)
        } catch {
            undoUnix(removing: listenerChange)
            throw error
        }
        let plan = inForce.withLock { running in
            let plan = ConfigFileReload(running: running, candidate: candidate, holdBytesInUse: holdBudget.bytesReserved)
            running = plan.result
            return plan
        }
        let next = plan.result
        let pool = routing.current
        if next.backends != pool.backends || next.onBackendDown != pool.policy {
            // Addresses from this reload's lookups; the monitor re-resolves names from here on.
            let byBackend = Dictionary(zip(candidate.backends.map(\.description), addresses), uniquingKeysWith: { first, _ in first })
            let nextAddresses = next.backends.map { byBackend[$0.description]! }
            logAddressChanges(from: pool, to: next.backends, nextAddresses)
            routing.replaceBackends(next.backends, addresses: nextAddresses, policy: next.onBackendDown)
        }
        monitor.update(next)
        var reported = plan
        let listenerAnswers = changeListeners(listenerChange)
        let tcpAnswers = changeTCPListeners(tcpChange)
        if !listenerChange.isEmpty || !tcpChange.isEmpty {
            monitor.updateListeners(.init(udp: listenAddresses, tcp: tcpListenAddresses))
        }
        let answers = tellWorkers([
            .applySettings(packetBytes: next.packetBytes, flushIntervalNanoseconds: next.flushIntervalNanoseconds),
            .followPool,
        ])
        reported.workersNotApplied = max(
            answers.refused + answers.unanswered, listenerAnswers.refused + listenerAnswers.unanswered,
            tcpAnswers.refused + tcpAnswers.unanswered)
        if reported.workersNotApplied == 0 {
            reloads.recordSuccess(at: Relay.unixTime())
        } else {
            reloads.recordFailure()
        }
        return reported
    }

    /// Sets the mode `candidate` gives each Unix listener it keeps, where it changed, on the
    /// listener's socket file (`--unix-socket-mode`, a listener's `mode`): at the reload, not at
    /// the next start.
    ///
    /// - Returns: the files changed, with their previous modes (to restore should the reload
    ///   fail later).
    /// - Throws: `ConfigurationError` naming the path when a mode cannot be set: the file is no
    ///   longer this relay's (removed or replaced), it is systemd's (socket activation: its mode
    ///   is the socket unit's `SocketMode=`), or `chmod` failed; the modes set before it go back.
    private func changeUnixModes(to candidate: RelayConfiguration) throws(ConfigurationError) -> [(file: UnixListenerFile, previous: UInt32)] {
        let running = configurationInForce
        let (configured, ids, files) = state.withLock { ($0.configuredListeners, $0.listenerIDs, $0.unixFiles) }
        let wanted = candidate.listenAddresses
        var changed: [(file: UnixListenerFile, previous: UInt32)] = []
        for (index, address) in configured.enumerated() {
            guard let path = address.unixPath, wanted.contains(address) else { continue }
            let mode = candidate.unixSocketMode(for: path)
            let previous = running.unixSocketMode(for: path)
            guard mode != previous else { continue }
            let reason: String
            if listenerRegistry.isHeldElsewhere {
                reason = "the socket is systemd's (socket activation): set its mode with SocketMode= in the socket unit"
            } else if let file = files[ids[index]] {
                do throws(SystemCallError) {
                    try file.setMode(mode)
                    changed.append((file, previous))
                    continue
                } catch { reason = "\(error)" }
            } else {
                reason = "the relay holds no file for this listener: its mode cannot change"
            }
            for (file, previous) in changed.reversed() { try? file.setMode(previous) }
            throw ConfigurationError(argument: "unix-socket-mode", value: "\(path) \(String(mode, radix: 8))", reason: reason)
        }
        return changed
    }

    /// What a reload changes of one kind of listener (datagram or TCP), compared as configured:
    /// the running ones `wanted` no longer has (their positions among `running`), and the
    /// addresses it adds (their positions among `wanted`). The one comparison both kinds'
    /// preparations and the listener-set lock go by.
    struct ListenerDifference {
        var removed: [(index: Int, configured: SocketAddress)]
        var added: [(index: Int, address: SocketAddress)]
        var isEmpty: Bool { removed.isEmpty && added.isEmpty }
    }

    /// The difference between the `running` listeners and the `wanted` ones.
    static func listenerDifference(running: [SocketAddress], wanted: [SocketAddress]) -> ListenerDifference {
        ListenerDifference(
            removed: running.enumerated().filter { !wanted.contains($0.element) }.map { ($0.offset, $0.element) },
            added: wanted.enumerated().filter { !running.contains($0.element) }.map { ($0.offset, $0.element) })
    }

    /// The listeners a reload adds (bound, one socket per worker) and removes (by id).
    struct ListenerChange {
        /// Per listener added: its address as configured and bound, its id, and one socket per
        /// worker, in worker order.
        var added: [(configured: SocketAddress, bound: SocketAddress, id: UInt32, sockets: [SocketHandOver], copies: [SocketBox], file: UnixListenerFile?)] = []
        /// The ids removed, with their configured addresses.
        var removed: [(configured: SocketAddress, id: UInt32)] = []
        var isEmpty: Bool { added.isEmpty && removed.isEmpty }
    }

    /// Binds what `wanted` adds to the running listeners (compared as configured), one
    /// `SO_REUSEPORT` socket per worker, and names what it removes; nothing is changed.
    ///
    /// - Throws: `ConfigurationError` naming the listener that cannot be bound, with the
    ///   system's reason and errno (the sockets bound so far close).
    private func prepareListeners(_ wanted: [SocketAddress], modes: RelayConfiguration) throws(ConfigurationError) -> ListenerChange {
        let (running, ids, workers, started, held) = state.withLock {
            ($0.configuredListeners, $0.listenerIDs, $0.controls.count, $0.started, $0.listeners)
        }
        var change = ListenerChange()
        guard started else { return change }
        let difference = Self.listenerDifference(running: running, wanted: wanted)
        change.removed = difference.removed.map { ($0.configured, ids[$0.index]) }
        var nextID = state.withLock { $0.nextListenerID }
        for (index, address) in difference.added {
            var sockets: [SocketHandOver] = []
            var copies: [SocketBox] = []
            var bound = address
            var file: UnixListenerFile?
            do throws(SystemCallError) {
                if let path = address.unixPath {
                    // One socket for every worker: a path binds once.
                    let socket = try UDPSocket.listening(
                        unixPath: path, mode: modes.unixSocketMode(for: path), receiveBufferBytes: configuration.receiveBufferBytes)
                    file = UnixListenerFile.current(at: path)
                    // (Boxed: a duplicate made through a Sendable owner can be sent on.)
                    let original = SocketBox(socket)
                    for _ in 0..<workers {
                        copies.append(SocketBox(try original.socket.duplicate()))
                        let duplicate = try original.socket.duplicate()
                        sockets.append(SocketHandOver(duplicate))
                    }
                    change.added.append((address, address, nextID, sockets, copies, file))
                    nextID += 1
                    continue
                }
                // The relay's own sockets on an overlapping address (a move between a wildcard and
                // a specific address on one port) would fail the probe: the port was proven
                // exclusive when they bound, and SO_REUSEPORT lets the new sockets join.
                if address.port != 0 && !configuration.reusePortGroup && !held.contains(where: { Self.overlap($0, address) }) {
                    try UDPSocket.probeExclusive(address)
                }
                for _ in 0..<workers {
                    let socket = try UDPSocket.bound(to: bound, reusePort: true, receiveBufferBytes: configuration.receiveBufferBytes)
                    if configuration.reusePortSteering == .random && workers > 1 { try socket.spreadReusePortGroup(over: workers) }
                    // `--reuseport-steering cpu`: each worker sets its CPU as it takes the socket.
                    // Port 0: the other workers join the port the first socket was given.
                    bound = socket.localAddress
                    // (A reload is rare: a copy made and closed at once without --control-socket
                    // costs less than the branch the region checker cannot follow.)
                    copies.append(SocketBox(try socket.duplicate()))
                    sockets.append(SocketHandOver(socket))
                }
            } catch {
                file?.removeIfOwned()
                for added in change.added { added.file?.removeIfOwned() }
                throw ConfigurationError(argument: "listeners[\(index)]", value: address.description, reason: "\(error)")
            }
            change.added.append((address, bound, nextID, sockets, copies, nil))
            nextID += 1
        }
        return change
    }

    /// Whether a datagram to one of the two addresses could be taken by a socket bound to the
    /// other: the same port, and one of them a wildcard of its family (an IPv6 wildcard also
    /// takes IPv4, dual-stack).
    static func overlap(_ one: SocketAddress, _ other: SocketAddress) -> Bool {
        guard one.port == other.port else { return false }
        func covers(_ wildcard: SocketAddress, _ address: SocketAddress) -> Bool {
            wildcard.isUnspecified && (wildcard.family == address.family || wildcard.family == .ipv6)
        }
        return covers(one, other) || covers(other, one)
    }

    /// Sends `change` to every worker and waits until each has applied it: an added listener
    /// receiving in every worker, a removed one closed in every worker with what it held taken.
    private func changeListeners(_ change: ListenerChange) -> CommandReceipt.Outcome {
        let workers = state.withLock { $0.controls.count }
        guard !change.isEmpty else { return CommandReceipt.Outcome(applied: workers, refused: 0, unanswered: 0) }
        let outcome = tellEachWorker { worker in
            change.added.map { WorkerCommand.addListener(id: $0.id, socket: $0.sockets[worker]) }
                + change.removed.map { WorkerCommand.removeListener(id: $0.id) }
        }
        state.withLock { state in
            // A removed listener leaves the state (and the takeover registry) once every worker
            // answered its removal: closed there (a worker drains it for at most
            // `WorkerListeners.removalDrainNanoseconds`) or refused (the worker stopped, and closed
            // it with the others). One a worker has not answered yet stays, so the next reload
            // asks for its removal again.
            for (_, id) in change.removed where outcome.unanswered == 0 {
                listenerRegistry.forget(listener: id)
                // Every worker closed it: its file goes (but not a successor's, by then).
                state.unixFiles.removeValue(forKey: id)?.removeIfOwned()
                guard let index = state.listenerIDs.firstIndex(of: id) else { continue }
                state.listeners.remove(at: index)
                state.configuredListeners.remove(at: index)
                state.listenerIDs.remove(at: index)
            }
            for added in change.added {
                // `keep` ignores them when the relay keeps no copies.
                for (worker, copy) in added.copies.enumerated() { listenerRegistry.keep(copy, listener: added.id, worker: worker) }
                state.listeners.append(added.bound)
                state.configuredListeners.append(added.configured)
                state.listenerIDs.append(added.id)
                state.nextListenerID = max(state.nextListenerID, added.id + 1)
                if let file = added.file { state.unixFiles[added.id] = file }
            }
        }
        return outcome
    }

    /// The TCP listeners a reload adds (bound, one socket per worker) and removes (by id).
    struct TCPListenerChange {
        /// Per listener added: its address as configured and bound, its id, and one socket per
        /// worker, in worker order.
        var added: [(configured: SocketAddress, bound: SocketAddress, id: UInt32, sockets: [TCPListenerHandOver], copies: [SocketBox])] = []
        /// The ids removed, with their configured addresses.
        var removed: [(configured: SocketAddress, id: UInt32)] = []
        var isEmpty: Bool { added.isEmpty && removed.isEmpty }
    }

    /// Binds what `wanted` adds to the running TCP listeners (compared as configured), one
    /// `SO_REUSEPORT` listening socket per worker, with ids after the `skippingIDs` the UDP
    /// listeners of the same reload take; names what it removes; nothing is changed.
    ///
    /// - Throws: `ConfigurationError` naming the listener that cannot be bound, with the
    ///   system's reason (the sockets bound so far close).
    private func prepareTCPListeners(_ wanted: [SocketAddress], skippingIDs: Int) throws(ConfigurationError) -> TCPListenerChange {
        let (running, ids, workers, started, firstID, held) = state.withLock {
            ($0.configuredTCPListeners, $0.tcpListenerIDs, $0.controls.count, $0.started, $0.nextListenerID, $0.tcpListeners)
        }
        var change = TCPListenerChange()
        guard started else { return change }
        let difference = Self.listenerDifference(running: running, wanted: wanted)
        change.removed = difference.removed.map { ($0.configured, ids[$0.index]) }
        var nextID = firstID + UInt32(skippingIDs)
        for (_, address) in difference.added {
            var sockets: [TCPListenerHandOver] = []
            var copies: [SocketBox] = []
            var bound = address
            do throws(SystemCallError) {
                // As for UDP: the relay's own listening sockets on an overlapping address (a move
                // between a wildcard and a specific address on one port) would fail the probe.
                if address.port != 0 && !configuration.reusePortGroup && !held.contains(where: { Self.overlap($0, address) }) {
                    try TCPListenSocket.probeExclusive(address)
                }
                for _ in 0..<workers {
                    let socket = try TCPListenSocket.listening(on: bound)
                    // Port 0: the other workers join the port the first socket was given.
                    bound = socket.localAddress
                    // The registry's copy, for a takeover (none kept without --control-socket).
                    if listenerRegistry.keepsCopies { copies.append(try socket.passable()) }
                    sockets.append(TCPListenerHandOver(socket))
                }
            } catch {
                throw ConfigurationError(argument: "listeners", value: "tcp:\(address)", reason: "\(error)")
            }
            change.added.append((address, bound, nextID, sockets, copies))
            nextID += 1
        }
        return change
    }

    /// Sends `change` to every worker and waits until each has applied it: an added TCP
    /// listener accepting in every worker, a removed one's listening socket closed in every
    /// worker (its open connections stay until they close, idle out, or the relay stops).
    private func changeTCPListeners(_ change: TCPListenerChange) -> CommandReceipt.Outcome {
        let workers = state.withLock { $0.controls.count }
        guard !change.isEmpty else { return CommandReceipt.Outcome(applied: workers, refused: 0, unanswered: 0) }
        let outcome = tellEachWorker { worker in
            change.added.map { WorkerCommand.addTCPListener(id: $0.id, socket: $0.sockets[worker]) }
                + change.removed.map { WorkerCommand.removeTCPListener(id: $0.id) }
        }
        state.withLock { state in
            for (_, id) in change.removed where outcome.unanswered == 0 {
                listenerRegistry.forget(listener: id)
                guard let index = state.tcpListenerIDs.firstIndex(of: id) else { continue }
                state.tcpListeners.remove(at: index)
                state.configuredTCPListeners.remove(at: index)
                state.tcpListenerIDs.remove(at: index)
            }
            for added in change.added {
                for (worker, copy) in added.copies.enumerated() { listenerRegistry.keep(copy, listener: added.id, worker: worker) }
                state.tcpListeners.append(added.bound)
                state.configuredTCPListeners.append(added.configured)
                state.tcpListenerIDs.append(added.id)
                state.nextListenerID = max(state.nextListenerID, added.id + 1)
            }
        }
        return outcome
    }

    /// How long a reload waits for every worker to apply it.
    public static let workerAnswerNanoseconds: UInt64 = 2_000_000_000

    /// Sends each started worker its own commands (`commands(worker)`), in order, and waits (at
    /// most `timeoutNanoseconds`) until each has applied its last.
    @discardableResult
    func tellEachWorker(
        timeoutNanoseconds: UInt64 = Relay.workerAnswerNanoseconds, _ commands: (Int) -> [WorkerCommand]
    ) -> CommandReceipt.Outcome {
        let controls = state.withLock { $0.controls }
        let receipt = CommandReceipt(workers: controls.count)
        for (worker, control) in controls.enumerated() {
            let list = commands(worker)
            guard let last = list.last else {
                receipt.workerApplied()
                continue
            }
            for command in list.dropLast() { control.send(command) }
            control.send(last, receipt: receipt)
        }
        return receipt.wait(timeoutNanoseconds: timeoutNanoseconds)
    }

    /// Sends `commands` to every started worker, in order, and waits (at most
    /// `workerAnswerNanoseconds`) until each has applied the last (so all of them: a worker
    /// applies its commands in order).
    ///
    /// - Returns: how many workers applied them, refused them (stopped) and did not answer in time.
    @discardableResult
    public func tellWorkers(
        _ commands: [WorkerCommand], timeoutNanoseconds: UInt64 = Relay.workerAnswerNanoseconds
    ) -> CommandReceipt.Outcome {
        let controls = state.withLock { $0.controls }
        guard let last = commands.last else { return CommandReceipt.Outcome(applied: controls.count, refused: 0, unanswered: 0) }
        let receipt = CommandReceipt(workers: controls.count)
        for control in controls {
            for command in commands.dropLast() { control.send(command) }
            control.send(last, receipt: receipt)
        }
        return receipt.wait(timeoutNanoseconds: timeoutNanoseconds)
    }

    /// `reload(to:addresses:)`, looking the backends' names up first (concurrently, waiting at
    /// most `resolverLimitNanoseconds`): for callers that need not answer signals meanwhile.
    ///
    /// - Throws: as `reload(to:addresses:)`, and `BackendResolutionError` for a name without an
    ///   address (counted as a failed reload).
    @discardableResult
    public func reload(
        to candidate: RelayConfiguration, resolver: @escaping HealthMonitor.Resolver = BackendResolver.system,
        resolverLimitNanoseconds: UInt64 = BackendLookup.defaultLimitNanoseconds
    ) throws -> ConfigFileReload {
        let addresses: [SocketAddress]
        do {
            addresses = try BackendLookup(backends: candidate.backends, resolver: resolver, limitNanoseconds: resolverLimitNanoseconds)
                .wait(keeping: addressesInUse)
        } catch {
            reloads.recordFailure()
            throw error
        }
        return try reload(to: candidate, addresses: addresses)
    }

    /// The address each backend is sent to now, by identity (`host:port[:instance]`): what a
    /// lookup for a change of backends keeps where the name still lists it
    /// (`BackendLookup.addresses(keeping:)`).
    public var addressesInUse: [String: SocketAddress] {
        let pool = routing.current
        return Dictionary(zip(pool.backends.map(\.description), pool.addresses), uniquingKeysWith: { first, _ in first })
    }

    /// Logs each backend that stays in the pool but goes to another address with it (its name
    /// no longer lists the address in use), as a refresh logs a move (`HealthMonitor`).
    private func logAddressChanges(from pool: BackendPool, to backends: [BackendAddress], _ addresses: [SocketAddress]) {
        let running = Dictionary(zip(pool.backends.map(\.description), pool.addresses), uniquingKeysWith: { first, _ in first })
        for (backend, address) in zip(backends, addresses) {
            guard let previous = running[backend.description], previous != address else { continue }
            logger.info("backend address changed", metadata: [
                "backend": "\(backend)", "from": "\(previous)", "to": "\(address)", "by": "reload",
            ])
        }
    }

    /// Asks every worker to drain, flush and stop; returns at once (see `wait`).
    public func stop() {
        let controls = state.withLock { state in
            state.stopping = true
            return state.controls
        }
        for control in controls { control.send(.stop) }
        monitor.stop()
        sendFailures.stop()
    }

    /// Waits for every worker to finish and returns the summed counters, and the failures of
    /// workers that stopped on an error.
    public func wait() -> (counters: RelayCounters, failures: [String]) {
        let threads = state.withLock { $0.threads }
        for thread in threads { thread.join() }
        // Every worker has closed its listeners: the copies are all that holds them open.
        listenerRegistry.forgetAll()
        removeUnixFiles()
        return state.withLock { state in
            var total = RelayCounters(backends: routing.current.identities)
            for counters in state.counters { total += counters }
            return (total, state.failures)
        }
    }

    /// Every worker's counters as last published (at most `CounterBoard.publishIntervalNanoseconds`
    /// old), summed; safe from any thread while the relay runs.
    public func liveCounters() -> RelayCounters {
        let boards = state.withLock { $0.boards }
        var total = RelayCounters(backends: routing.current.identities)
        for board in boards { if let counters = board.counters { total += counters } }
        return total
    }

    /// What the admin endpoint reads: whether `start` has succeeded (every worker runs and
    /// `driver` is final; read under the same lock, so `driver` may be read after it), whether a
    /// stop was asked for, when each started worker last published its counters (monotonic
    /// nanoseconds, in worker order), and the failures of workers that stopped on an error.
    public var workerStatus: (started: Bool, stopping: Bool, publishedAt: [UInt64], failures: [String]) {
        let (started, stopping, boards, failures) = state.withLock { ($0.started, $0.stopping, $0.boards, $0.failures) }
        return (started, stopping, boards.map(\.publishedAt), failures)
    }

    /// What a takeover is checked against and hands over: the listeners as configured and as
    /// bound, their ids (for `listenerRegistry`), the same of the TCP ingest listeners, how many
    /// workers run, and whether the relay has started and is stopping.
    var handOverView: HandOverView {
        state.withLock {
            HandOverView(
                configured: $0.configuredListeners, bound: $0.listeners, ids: $0.listenerIDs,
                tcpConfigured: $0.configuredTCPListeners, tcpBound: $0.tcpListeners, tcpIDs: $0.tcpListenerIDs,
                workers: $0.controls.count, started: $0.started, stopping: $0.stopping)
        }
    }

    /// The running listeners as a takeover sees them (`handOverView`).
    struct HandOverView {
        /// The UDP and Unix datagram listeners as configured, as bound, and their ids.
        var configured: [SocketAddress]
        var bound: [SocketAddress]
        var ids: [UInt32]
        /// The TCP ingest listeners as configured, as bound, and their ids.
        var tcpConfigured: [SocketAddress]
        var tcpBound: [SocketAddress]
        var tcpIDs: [UInt32]
        var workers: Int
        var started: Bool
        var stopping: Bool
    }

    /// The CPUs the workers are pinned to (`--cpus`, else the ones this process may use).
    public var workerCPUs: [Int] { assignedCPUs.compactMap { $0 } }

    /// The CPU each worker is pinned to, in worker order (`--cpus`, else the ones this process
    /// could use when the relay was made, taken in turn; `nil` when none could be read).
    private let assignedCPUs: [Int?]

    /// Whether each worker's listening sockets take the datagrams received on its CPU
    /// (`--reuseport-steering cpu`; with one worker there is nothing to steer).
    private var steersByCPU: Bool { configuration.reusePortSteering == .cpu && configuration.threads > 1 }

    /// Bytes of hold memory the workers have taken for down backends' packets, all together.
    public var holdBytesInUse: Int { holdBudget.bytesReserved }

    private func stopAndJoin() {
        stop()
        _ = wait()
    }
}

/// A started thread that can be joined once from any thread.
public final class WorkerThreadHandle: Sendable {
    private let thread: Mutex<WorkerThread?>

    /// Takes ownership of a started thread.
    public init(_ thread: consuming WorkerThread) { self.thread = Mutex(thread) }

    /// Joins the thread; later calls return at once.
    public func join() {
        let taken = thread.withLock { slot -> WorkerThread? in
            let taken = slot.take()
            return taken
        }
        taken?.join()
    }
}

/// A one-time hand-over of a worker's start-up result to the thread that started it.
final class StartupSignal: Sendable {
    private let result = Mutex<Result<WorkerFacts, SystemCallError>?>(nil)
    private let ready = DispatchSemaphore(value: 0)

    /// Reports the result; call once.
    func report(_ outcome: Result<WorkerFacts, SystemCallError>) {
        result.withLock { $0 = outcome }
        ready.signal()
    }

    /// Waits for the report.
    func wait() -> Result<WorkerFacts, SystemCallError> {
        ready.wait()
        return result.withLock { $0! }
    }
}
