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
    /// Checks backends and re-resolves their names.
    public let monitor: HealthMonitor
    private let logger: Logger
    private let state = Mutex(State())

    private struct State: ~Copyable {
        var wakeups: [WakeupEvent] = []
        var threads: [WorkerThreadHandle] = []
        var counters: [RelayCounters] = []
        var boards: [CounterBoard] = []
        var failures: [String] = []
        var listen: SocketAddress?
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

    /// Validates `configuration` and resolves every backend.
    ///
    /// - Parameter uringProbe: decides whether io_uring can run (injectable for tests).
    /// - Throws: `ConfigurationError` naming the bad setting, or `ResolutionError`.
    public init(
        configuration: RelayConfiguration, logger: Logger,
        resolver: @escaping HealthMonitor.Resolver = { host, port in try SocketAddress.resolve(host: host, port: port) },
        uringProbe: @escaping UringProbe = { settings in KernelSupport.uringDriverFailure(sizing: settings.ringSizing, payloadBytes: settings.maxDatagramBytes) }
    ) throws {
        try configuration.validate()
        var resolved: [SocketAddress] = []
        for backend in configuration.backends {
            let addresses = try resolver(backend.host, backend.port)
            guard let first = addresses.first else { throw ResolutionError(host: backend.host, reason: "no address") }
            resolved.append(first)
        }
        self.configuration = configuration
        self.backendAddresses = resolved
        self.logger = logger
        self.uringProbe = uringProbe
        holdBudget = HoldBudget(
            totalBytes: configuration.holdBytes, replayBytesPerSecond: configuration.replayBytesPerSecond,
            workers: configuration.threads)
        routing = RoutingState(pool: BackendPool(backends: configuration.backends, addresses: resolved, policy: configuration.onBackendDown))
        monitor = try HealthMonitor(configuration: configuration, routing: routing, logger: logger, resolver: resolver)
    }

    /// The address the workers listen on, with the port actually bound (after `start`).
    public var listenAddress: SocketAddress? { state.withLock { $0.listen } }

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
    public func start() throws -> WorkerFacts {
        let config = configuration
        let listen = SocketAddress(numericHost: config.bindHost, port: config.port)!
        if config.port != 0 && !config.reusePortGroup {
            // Every worker binds with SO_REUSEPORT; without this check a second relay, or any
            // stray SO_REUSEPORT socket, on the port would take a share of the traffic unseen.
            try UDPSocket.probeExclusive(listen)
        }
        let probeSettings = WorkerSettings(configuration: config, listeners: [listen], routing: routing, holdBudget: holdBudget)
        switch config.ioBackend {
        case .portable:
            driver = .portable
            driverReason = "--io-backend portable"
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
            facts = try startWorkers(driver: driver, listen: listen)
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
            facts = try startWorkers(driver: .portable, listen: listen)
        }
        if let driverReason {
            logger.warning("io_backend=\(driver.rawValue) reason=\"\(driverReason)\"")
        } else {
            logger.info("io_backend=\(driver.rawValue)")
        }
        do throws(Errno) { try monitor.start() } catch {
            stopAndJoin()
            throw SystemCallError("pthread_create", "health monitor", error)
        }
        return facts
    }

    /// Starts every worker on `driver`, one after another so that, for port 0, the others join
    /// the port the first one was given.
    ///
    /// - Returns: the first worker's facts.
    /// - Throws: `SystemCallError` from the first worker that could not start; the ones already
    ///   started are then stopped and joined, and forgotten, so workers can be started again.
    private func startWorkers(driver: IOBackendChoice, listen configured: SocketAddress) throws -> WorkerFacts {
        let config = configuration
        var listen = configured
        let cpus = config.cpus ?? WorkerThread.allowedCPUs
        var firstFacts: WorkerFacts?
        for index in 0..<config.threads {
            let settings = WorkerSettings(configuration: config, listeners: [listen], routing: routing, holdBudget: holdBudget)
            let board = settings.board
            let wakeup: WakeupEvent
            do throws(Errno) { wakeup = try WakeupEvent() } catch {
                stopAndForgetWorkers()
                throw SystemCallError("eventfd", "", error)
            }
            let cpu = cpus.isEmpty ? nil : cpus[index % cpus.count]
            let started = StartupSignal()
            let logger = self.logger
            let thread: WorkerThread
            do throws(Errno) {
                thread = try WorkerThread(name: "statsrelay-w\(index)", cpu: cpu) { [self] pinning in
                    if let pinning {
                        logger.warning("worker could not be pinned", metadata: ["worker": "\(index)", "cpu": "\(cpu ?? -1)", "error": "\(pinning.operatorDescription)"])
                    }
                    let outcome = Self.runWorker(driver: driver, settings: settings, wakeup: wakeup, started: started)
                    switch outcome {
                    case .success(let counters)?:
                        self.state.withLock { $0.counters.append(counters) }
                    case .failure(let error)?:
                        logger.critical("worker stopped on a driver failure", metadata: ["worker": "\(index)", "error": "\(error)"])
                        self.state.withLock { $0.failures.append("worker \(index): \(error)") }
                    case nil:
                        break  // it never started; the start-up signal carried the error
                    }
                }
            } catch {
                stopAndForgetWorkers()
                throw SystemCallError("pthread_create", "worker \(index)", error)
            }
            let handle = WorkerThreadHandle(thread)
            state.withLock {
                $0.wakeups.append(wakeup)
                $0.threads.append(handle)
                $0.boards.append(board)
            }
            switch started.wait() {
            case .success(let facts):
                if index == 0 {
                    listen = facts.listen
                    firstFacts = facts
                    state.withLock { $0.listen = facts.listen }
                }
            case .failure(let error):
                stopAndForgetWorkers()
                throw error
            }
        }
        return firstFacts!
    }

    /// Stops and joins the workers started so far and forgets them (the health monitor, not
    /// yet started, is left alone so that it can still start).
    private func stopAndForgetWorkers() {
        let (wakeups, threads) = state.withLock { ($0.wakeups, $0.threads) }
        for wakeup in wakeups { wakeup.signal() }
        for thread in threads { thread.join() }
        state.withLock { state in
            state.wakeups = []
            state.threads = []
            state.boards = []
            // What the stopped workers relayed stays counted.
            state.failures = []
            state.listen = nil
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
    /// - Returns: the counters, the driver's failure, or `nil` if it never started.
    private static func runWorker(
        driver: IOBackendChoice, settings: WorkerSettings, wakeup: WakeupEvent, started: StartupSignal
    ) -> Result<RelayCounters, SystemCallError>? {
        switch driver {
        case .portable: run(PortableDriver.self, settings: settings, wakeup: wakeup, started: started)
        case .uring, .auto: run(IOUringDriver.self, settings: settings, wakeup: wakeup, started: started)
        }
    }

    /// Opens one driver of type `Driver`, reports its start, runs it (see `runWorker`).
    private static func run<Driver: IODriver & ~Copyable>(
        _: Driver.Type, settings: WorkerSettings, wakeup: WakeupEvent, started: StartupSignal
    ) -> Result<RelayCounters, SystemCallError>? {
        let worker: Driver
        do throws(SystemCallError) { worker = try Driver(settings: settings, wakeup: wakeup) } catch {
            started.report(.failure(error))
            return nil
        }
        started.report(.success(worker.facts))
        do throws(SystemCallError) { return .success(try worker.run()) } catch { return .failure(error) }
    }

    /// Replaces the backends while the relay runs: every worker sends what it batched for the
    /// old pool, then routes by the new one from a turn boundary on (no line lost or sent
    /// twice; each line routed wholly by one pool). Backends that stay keep their counters.
    ///
    /// - Throws: `ConfigurationError` for an empty or duplicated list, `ResolutionError` for a
    ///   name that does not resolve; the running pool is then left as it is.
    public func replaceBackends(
        _ backends: [BackendAddress],
        resolver: HealthMonitor.Resolver = { host, port in try SocketAddress.resolve(host: host, port: port) }
    ) throws {
        var candidate = configuration
        candidate.backends = backends
        try candidate.validate()
        var resolved: [SocketAddress] = []
        for backend in backends {
            guard let first = try resolver(backend.host, backend.port).first else {
                throw ResolutionError(host: backend.host, reason: "no address")
            }
            resolved.append(first)
        }
        routing.replaceBackends(backends, addresses: resolved)
    }

    /// Asks every worker to drain, flush and stop; returns at once (see `wait`).
    public func stop() {
        let wakeups = state.withLock { $0.wakeups }
        for wakeup in wakeups { wakeup.signal() }
        monitor.stop()
    }

    /// Waits for every worker to finish and returns the summed counters, and the failures of
    /// workers that stopped on an error.
    public func wait() -> (counters: RelayCounters, failures: [String]) {
        let threads = state.withLock { $0.threads }
        for thread in threads { thread.join() }
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
