import RelayKernel
import Dispatch
import Logging
import Synchronization

/// Checks every backend off the data path, on its own thread, and publishes the health view
/// and re-resolved addresses to the workers through `RoutingState`.
///
/// Each interval: one round of probes (all at once, bounded by the timeout), plus any send
/// refusals the workers reported since the last round (a refusal is a failed check); each
/// result feeds the backend's `HealthTracker`. Every `dnsRefresh`, backends given by name are
/// resolved again. A change of state or address is logged at info and published; nothing is
/// logged per line or per check.
///
/// Two conditions are logged loudly because they mean the checks, not the backends, may be
/// wrong: a first round in which every backend fails (a warning naming the likely mistake), and
/// every backend down, when the router fails open under `rehash` and `drop` (an error when it
/// starts, info when it ends, each start counted in `failOpenActivations`).
public final class HealthMonitor: Sendable {
    /// Resolves a host to addresses (injectable so tests can change what a name points to).
    public typealias Resolver = @Sendable (String, UInt16) throws -> [SocketAddress]

    /// One backend's state for operators.
    public struct BackendStatus: Sendable {
        public var backend: BackendAddress
        public var address: SocketAddress
        public var state: HealthTracker.State
        /// Monotonic nanoseconds when the state began.
        public var since: UInt64
        public var changes: Int
        public var lastFailure: String?
    }

    private let configuration: RelayConfiguration
    private let routing: RoutingState
    private let logger: Logger
    private let resolver: Resolver
    private let stopEvent: WakeupEvent
    private let thread = Mutex<WorkerThreadHandle?>(nil)
    private let statuses: Mutex<[BackendStatus]>
    private let updated = DispatchSemaphore(value: 0)
    private let activations = Atomic<UInt64>(0)
    private let failingOpen = Atomic<Bool>(false)

    /// A monitor for `configuration`'s backends, starting from `routing`'s addresses.
    public init(
        configuration: RelayConfiguration, routing: RoutingState, logger: Logger,
        resolver: @escaping Resolver = { host, port in try SocketAddress.resolve(host: host, port: port) }
    ) throws(Errno) {
        self.configuration = configuration
        self.routing = routing
        self.logger = logger
        self.resolver = resolver
        stopEvent = try WakeupEvent()
        let now = MonotonicClock.nanoseconds()
        let addresses = routing.current.addresses
        statuses = Mutex(zip(configuration.backends, addresses).map {
            BackendStatus(backend: $0, address: $1, state: .up, since: now, changes: 0, lastFailure: nil)
        })
    }

    /// The current state of every backend.
    public var status: [BackendStatus] { statuses.withLock { $0 } }

    /// How many times every backend went down under a policy that fails open (`rehash`,
    /// `drop`), so the workers relayed to the primaries as if healthy. Readable from any thread
    /// (for the report at exit).
    public var failOpenActivations: UInt64 { activations.load(ordering: .relaxed) }

    /// Whether the relay is failing open now: every backend is down and the policy is not `hold`.
    /// Set when the monitor publishes the health view; each worker follows at its next turn.
    public var isFailingOpen: Bool { failingOpen.load(ordering: .relaxed) }

    /// What is likely wrong when every backend failed the first round of checks, or `nil` when
    /// at least one passed (or there was nothing to check).
    ///
    /// A check that fails everywhere at start is more often a wrong `--health-check` than a dead
    /// pool: `tcp` needs a TCP listener on the port it checks, which UDP-only statsd daemons do
    /// not have.
    /// - Parameters:
    ///   - mode: the check that ran.
    ///   - outcomes: the round's outcomes, one per backend (`nil` for a pass).
    public static func firstRoundHint(mode: HealthCheckMode, outcomes: [TCPProbe.Outcome]) -> String? {
        guard !outcomes.isEmpty, !outcomes.contains(where: { $0 == nil }) else { return nil }
        switch mode {
        case .none:
            return nil
        case .tcp:
            return "tcp needs a TCP listener on each backend's port (or on --health-check-port), and UDP-only statsd"
                + " daemons have none; for etsy statsd use --health-check statsd-admin, otherwise --health-check none"
        case .statsdAdmin:
            return "statsd-admin needs etsy statsd's management port (8126 unless --health-check-port) reachable and"
                + " answering 'health: up'; check the port and the management interface, or use --health-check none"
        }
    }

    /// Waits until `condition` holds for the backends' status (checked after every round), at
    /// most `timeoutNanoseconds`. For tests and tools that must act once a state is reached.
    ///
    /// - Returns: whether the condition held in time.
    public func waitUntil(timeoutNanoseconds: UInt64, _ condition: ([BackendStatus]) -> Bool) -> Bool {
        let deadline = DispatchTime.now() + .nanoseconds(Int(timeoutNanoseconds))
        while !condition(status) {
            if updated.wait(timeout: deadline) == .timedOut { return condition(status) }
        }
        return true
    }

    /// Starts the monitor's thread (unpinned: it is off the data path).
    public func start() throws(Errno) {
        let handle = WorkerThreadHandle(try WorkerThread(name: "statsrelay-hc", cpu: nil) { [self] _ in run() })
        thread.withLock { $0 = handle }
    }

    /// Stops the thread and waits for it.
    public func stop() {
        stopEvent.signal()
        let handle = thread.withLock { $0 }
        handle?.join()
    }

    /// The probe for each backend under the configured mode.
    ///
    /// - Parameter backends: the backends the addresses belong to (default: the configured ones).
    public func targets(for addresses: [SocketAddress], backends: [BackendAddress]? = nil) -> [TCPProbe.Target] {
        let mode = configuration.healthCheck
        return zip(backends ?? configuration.backends, addresses).map { backend, address in
            var target = address
            target.port = configuration.healthCheckPort ?? mode.defaultPort(backendPort: backend.port)
            switch mode {
            case .statsdAdmin:
                return TCPProbe.Target(address: target, request: Array("health\n".utf8), expect: Array("health: up".utf8))
            case .tcp, .none:
                return TCPProbe.Target(address: target)
            }
        }
    }

    private func run() {
        let config = configuration
        var pool = routing.current
        var backends = pool.backends
        var count = backends.count
        var trackers = (0..<count).map { _ in
            HealthTracker(rise: config.healthRise, fall: config.healthFall, now: MonotonicClock.nanoseconds())
        }
        var addresses = pool.addresses
        var down = Array(repeating: false, count: count)
        func namedBackends() -> [Int] { backends.indices.filter { SocketAddress(numericHost: backends[$0].host, port: 0) == nil } }
        var named = namedBackends()
        var resolveFailing = Array(repeating: false, count: count)
        var now = MonotonicClock.nanoseconds()
        var nextCheck = now &+ config.healthIntervalNanoseconds
        var nextResolve = now &+ config.dnsRefreshNanoseconds
        var allDown = false
        var firstRound = true
        while true {
            var due = named.isEmpty ? UInt64.max : nextResolve
            if config.healthCheck != .none { due = min(due, nextCheck) }
            if stopEvent.wait(timeoutNanoseconds: due == .max ? nil : (due > now ? due - now : 0)) { return }
            now = MonotonicClock.nanoseconds()
            var changed = false
            let latest = routing.current
            if latest.membership != pool.membership {
                // The backends were replaced: a backend that stays keeps its tracker (and so its
                // state and history); a new one starts up, as the pool starts it.
                var byIdentity: [String: HealthTracker] = [:]
                for (index, backend) in backends.enumerated() { byIdentity[backend.description] = trackers[index] }
                pool = latest
                backends = latest.backends
                count = backends.count
                trackers = backends.map {
                    byIdentity[$0.description] ?? HealthTracker(rise: config.healthRise, fall: config.healthFall, now: now)
                }
                addresses = latest.addresses
                down = trackers.map { $0.state == .down }
                named = namedBackends()
                resolveFailing = Array(repeating: false, count: count)
                let now = now
                statuses.withLock { statuses in
                    statuses = zip(backends, addresses).map {
                        BackendStatus(backend: $0, address: $1, state: .up, since: now, changes: 0, lastFailure: nil)
                    }
                }
                changed = true
            }
            if !named.isEmpty && now >= nextResolve {
                nextResolve = now &+ config.dnsRefreshNanoseconds
                for index in named {
                    let backend = backends[index]
                    do {
                        let found = try resolver(backend.host, backend.port)
                        resolveFailing[index] = false
                        if let first = found.first, !found.contains(addresses[index]) {
                            logger.info("backend address changed", metadata: [
                                "backend": "\(backend)", "from": "\(addresses[index])", "to": "\(first)",
                            ])
                            addresses[index] = first
                            changed = true
                        }
                    } catch {
                        if !resolveFailing[index] {
                            logger.warning("backend name did not resolve; keeping its last address", metadata: [
                                "backend": "\(backend)", "address": "\(addresses[index])", "error": "\(error)",
                            ])
                        }
                        resolveFailing[index] = true
                    }
                }
            }
            if config.healthCheck != .none && now >= nextCheck {
                nextCheck = now &+ config.healthIntervalNanoseconds
                let probes = targets(for: addresses, backends: backends)
                let outcomes = TCPProbe.run(probes, timeoutMilliseconds: Int(config.healthTimeoutNanoseconds / 1_000_000))
                // By identity: the pool may have changed since this round's backends were taken.
                let refusals = routing.takeRefusalsByBackend()
                now = MonotonicClock.nanoseconds()
                if firstRound {
                    firstRound = false
                    if let hint = Self.firstRoundHint(mode: config.healthCheck, outcomes: outcomes) {
                        logger.warning("every backend failed its first health check: the check is likely wrong for these backends", metadata: [
                            "health_check": "\(config.healthCheck.rawValue)",
                            "checked": "\(probes.map { "\($0.address)" }.joined(separator: " "))",
                            "reason": "\(outcomes.first.flatMap { $0 } ?? "")",
                            "hint": "\(hint)",
                        ])
                    }
                }
                for index in 0..<count {
                    var failure = outcomes[index]
                    if failure == nil, let refused = refusals[backends[index].description], refused > 0 {
                        failure = "\(refused) sends refused (ICMP port unreachable)"
                    }
                    guard let state = trackers[index].record(success: failure == nil, reason: failure, now: now) else { continue }
                    down[index] = state == .down
                    changed = true
                    let backend = backends[index]
                    if state == .down {
                        logger.info("backend down", metadata: [
                            "backend": "\(backend)", "reason": "\(failure ?? "")", "failures": "\(config.healthFall)",
                            "policy": "\(config.onBackendDown.rawValue)",
                        ])
                    } else {
                        logger.info("backend up", metadata: ["backend": "\(backend)", "successes": "\(config.healthRise)"])
                    }
                }
                let nowAllDown = !down.contains(false)
                if nowAllDown != allDown {
                    allDown = nowAllDown
                    logAllDown(allDown, policy: config.onBackendDown)
                }
            }
            statuses.withLock { statuses in
                for index in 0..<count {
                    statuses[index].address = addresses[index]
                    statuses[index].state = trackers[index].state
                    statuses[index].since = trackers[index].since
                    statuses[index].changes = trackers[index].changes
                    statuses[index].lastFailure = trackers[index].lastFailure
                }
            }
            if changed { routing.publish(down: down, addresses: addresses, membership: pool.membership) }
            updated.signal()
        }
    }

    /// Logs (and, when the policy fails open, counts) every backend going down or one coming back.
    private func logAllDown(_ allDown: Bool, policy: DownPolicy) {
        let failsOpen = policy != .hold
        switch (allDown, failsOpen) {
        case (true, true):
            let count = activations.add(1, ordering: .relaxed).newValue
            failingOpen.store(true, ordering: .relaxed)
            logger.error("every backend is down: failing open, relaying each metric to its primary as if healthy", metadata: [
                "policy": "\(policy.rawValue)", "activations": "\(count)",
            ])
        case (true, false):
            logger.error("every backend is down: holding their lines until one recovers", metadata: ["policy": "\(policy.rawValue)"])
        case (false, true):
            failingOpen.store(false, ordering: .relaxed)
            logger.info("a backend is up again; failing open ends", metadata: ["policy": "\(policy.rawValue)"])
        case (false, false):
            logger.info("a backend is up again; relaying resumes", metadata: ["policy": "\(policy.rawValue)"])
        }
    }
}
