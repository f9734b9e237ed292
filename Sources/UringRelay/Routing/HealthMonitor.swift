import RelayKernel
import Dispatch
import Logging
import Synchronization

/// Checks every backend off the data path, on its own thread, and publishes the health view
/// and re-resolved addresses to the workers through `RoutingState`.
///
/// Each interval: one round of probes (all at once, bounded by the timeout), plus any send
/// refusals the workers published in the last two publication intervals (a refusal is a failed check); each
/// result feeds the backend's `HealthTracker`. Every `dnsRefresh`, backends given by name are
/// looked up again on lookup threads (`BackendResolver`): the monitor asks and takes the
/// answers as they come, so a resolver that never answers delays neither a check nor a stop
/// nor another name's lookup. An answer that would make a backend unusable (a broadcast or
/// multicast address, one of the relay's listeners, another backend's address) is not applied:
/// the backend keeps its address, and it is logged once. A change of state or address is
/// logged at info and published; nothing is logged per line or per check.
///
/// Two conditions are logged loudly because they mean the checks, not the backends, may be
/// wrong: a first round in which every backend fails (a warning naming the likely mistake), and
/// every backend down, when the router fails open under `rehash` and `drop` (an error when it
/// starts, info when it ends, each start counted in `failOpenActivations`).
///
/// Its settings (the check, its port, interval, timeout, rise and fall, the down-policy it logs,
/// the name refresh interval) can change while it runs (`update`, a reload): they are taken
/// between two rounds, never during one.
public final class HealthMonitor: Sendable {
    /// How long refusals taken from the workers' counters keep failing their backend's checks:
    /// two publication intervals, so that every round between two publications of a worker
    /// still refused to sees them.
    static let refusalMemoryNanoseconds: UInt64 = 2 * CounterBoard.publishIntervalNanoseconds

    /// Resolves a host to addresses (see `BackendResolver.Resolver`).
    public typealias Resolver = BackendResolver.Resolver

    /// One backend's state for operators.
    public struct BackendStatus: Sendable {
        public var backend: BackendAddress
        public var address: SocketAddress
        public var state: HealthTracker.State
        /// Monotonic nanoseconds when the state began.
        public var since: UInt64
        public var changes: Int
        public var lastFailure: String?
        /// Times it went down as a flap and was held down (`HealthTracker`'s flap damping).
        public var flapHolds = 0
        /// Monotonic nanoseconds when its current hold-down ends, while it is held down.
        public var heldUntil: UInt64?
    }

    /// The settings in force; `update` replaces them and the loop takes them between rounds.
    private let settings: Mutex<RelayConfiguration>
    /// Signalled by `update` and `wake`, so that a waiting monitor takes new settings or a new
    /// pool at once.
    private let settingsChanged: WakeupEvent
    private let routing: RoutingState
    private let logger: Logger
    private let lookups: BackendResolver
    private let stopEvent: WakeupEvent
    private let stopping = Atomic<Bool>(false)
    private let listeners = Mutex(BackendAddressCheck.OwnListeners())
    private let thread = Mutex<WorkerThreadHandle?>(nil)
    private let statuses: Mutex<[BackendStatus]>
    /// The membership generation of the pool `init` made the statuses for (`run` checks that
    /// it starts from that pool).
    private let statusesMembership: UInt64
    private let updated = DispatchSemaphore(value: 0)
    private let activations = Atomic<UInt64>(0)
    private let failingOpen = Atomic<Bool>(false)

    /// A monitor for `configuration`'s backends, starting from `routing`'s addresses.
    ///
    /// - Parameter resolver: looks names up at each refresh, on lookup threads.
    /// - Throws: `Errno` when an eventfd cannot be created.
    public init(
        configuration: RelayConfiguration, routing: RoutingState, logger: Logger,
        resolver: @escaping Resolver = BackendResolver.system
    ) throws(Errno) {
        settings = Mutex(configuration)
        self.routing = routing
        self.logger = logger
        lookups = try BackendResolver(resolver: resolver)
        stopEvent = try WakeupEvent()
        settingsChanged = try WakeupEvent()
        let now = MonotonicClock.nanoseconds()
        let pool = routing.current
        let addresses = pool.addresses
        statusesMembership = pool.membership
        statuses = Mutex(zip(configuration.backends, addresses).map {
            BackendStatus(backend: $0, address: $1, state: .up, since: now, changes: 0, lastFailure: nil)
        })
    }

    /// The current state of every backend.
    public var status: [BackendStatus] { statuses.withLock { $0 } }

    /// Replaces the monitor's settings (a reload): the health check (`healthCheck`,
    /// `healthCheckPort`, interval, timeout, rise, fall), the down-policy (with every backend
    /// down, a new one starts or ends failing open at once: `AllDownState`) and the name
    /// refresh interval. Taken at the next round boundary: a round in progress ends under the
    /// settings it began with. A backend keeps its state and its run of results; with new rise
    /// or fall, the next result is counted against them. Turning checks off (`none`) brings every
    /// backend up, as `none` means.
    public func update(_ configuration: RelayConfiguration) {
        settings.withLock { $0 = configuration }
        settingsChanged.signal()
    }

    /// Makes the monitor look at the routing state now (after a change of backends), rather
    /// than at its next check or refresh: the status operators read follows the new pool at once.
    public func wake() { settingsChanged.signal() }

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
        guard !outcomes.isEmpty, !outcomes.contains(where: { $0 == nil || !TCPProbe.isVerdict($0) }) else { return nil }
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
    ///
    /// - Parameter listeners: the relay's UDP and TCP listening addresses, with their bound
    ///   ports: a DNS refresh never moves a backend onto one of its own transport
    ///   (`BackendAddressCheck`).
    public func start(listeners: BackendAddressCheck.OwnListeners = .init()) throws(Errno) {
        self.listeners.withLock { $0 = listeners }
        let handle = WorkerThreadHandle(try WorkerThread(name: "statsrelay-hc", cpu: nil) { [self] _ in run() })
        thread.withLock { $0 = handle }
    }

    /// The relay's listening addresses after a reload added or removed some: what a DNS refresh
    /// checks a backend's new address against from now on.
    public func updateListeners(_ listeners: BackendAddressCheck.OwnListeners) {
        self.listeners.withLock { $0 = listeners }
    }

    /// Stops the thread and waits for it: at most the time to finish a log line or a
    /// publication, since a probe round ends as soon as the stop is signalled and lookups run
    /// elsewhere. Lookups still running are abandoned, never waited for.
    public func stop() {
        stopping.store(true, ordering: .releasing)
        stopEvent.signal()
        let handle = thread.withLock { $0 }
        handle?.join()
        lookups.close()
    }

    /// The probe for each backend under the configured mode.
    ///
    /// - Parameter backends: the backends the addresses belong to (default: the configured ones).
    /// A backend's own `healthCheckPort` comes first, then `--health-check-port`, then the
    /// mode's default.
    public func targets(for addresses: [SocketAddress], backends: [BackendAddress]? = nil) -> [TCPProbe.Target] {
        let configuration = settings.withLock { $0 }
        let mode = configuration.healthCheck
        return zip(backends ?? configuration.backends, addresses).map { backend, address in
            var target = address
            target.port = backend.healthCheckPort ?? configuration.healthCheckPort ?? mode.defaultPort(backendPort: backend.port)
            switch mode {
            case .statsdAdmin:
                return TCPProbe.Target(address: target, request: Array("health\n".utf8), expect: Array("health: up".utf8))
            case .tcp, .none:
                return TCPProbe.Target(address: target)
            }
        }
    }

    /// What the monitor knows of one backend's name between refreshes.
    private struct NameState {
        /// The resolver's last failure was logged (cleared by an answer).
        var failing = false
        /// A refresh found the previous lookup still unanswered, and it was logged.
        var stuck = false
        /// The last address refused for it (logged once per refused address).
        var refused: SocketAddress?
    }

    private func run() {
        var config = settings.withLock { $0 }
        var pool = routing.current
        var backends = pool.backends
        var count = backends.count
        var trackers = (0..<count).map { _ in Self.tracker(config, now: MonotonicClock.nanoseconds()) }
        var addresses = pool.addresses
        if pool.membership != statusesMembership {
            // The backends changed between `init` and this thread's start (a reload just after
            // start-up, with this thread started late on a busy host): the statuses `init` made
            // are another pool's, and fewer than this one's backends when it grew (the loop
            // below sets them by this pool's indices). Made again for this pool, each backend
            // up, as every tracker starts.
            let now = MonotonicClock.nanoseconds()
            statuses.withLock { statuses in
                statuses = zip(backends, addresses).map {
                    BackendStatus(backend: $0, address: $1, state: .up, since: now, changes: 0, lastFailure: nil)
                }
            }
        }
        var down = Array(repeating: false, count: count)
        func namedBackends() -> [Int] { backends.indices.filter { SocketAddress(numericHost: backends[$0].host, port: 0) == nil } }
        var named = namedBackends()
        var names = Array(repeating: NameState(), count: count)
        var events = PollSet(descriptors: [
            PollSet.descriptor(of: stopEvent), PollSet.descriptor(of: lookups.answered), PollSet.descriptor(of: settingsChanged),
        ])
        var now = MonotonicClock.nanoseconds()
        var nextCheck = now &+ config.healthIntervalNanoseconds
        var nextResolve = now &+ config.dnsRefreshNanoseconds
        var allDownState = AllDownState()
        var firstRound = true
        // Whether every probe of the last round could run (see `TCPProbe.noVerdictPrefix`).
        var lastRoundHadVerdicts = true
        // Refusals by identity, with when they were last taken: a worker publishes its counters
        // at most every `CounterBoard.publishIntervalNanoseconds`, so with checks more frequent
        // than that a round can fall between two publications and see none.
        var recentRefusals: [String: (at: UInt64, count: UInt64)] = [:]
        while true {
            var due = named.isEmpty ? UInt64.max : nextResolve
            if config.healthCheck != .none { due = min(due, nextCheck) }
            // Woken by a stop, an answer from a lookup, or the next due time.
            _ = try? events.wait(timeoutNanoseconds: due == .max ? nil : (due > now ? due - now : 0))
            if stopping.load(ordering: .acquiring) { return }
            now = MonotonicClock.nanoseconds()
            var changed = false
            // What ends every backend being down, should this pass end it: a check's recovery
            // unless a reload turned checks off or replaced the pool.
            var allDownEnd = AllDownEnd.backendUp
            // Between rounds: new settings from a reload.
            settingsChanged.reset()
            let latestSettings = settings.withLock { $0 }
            if latestSettings != config {
                let previous = config
                config = latestSettings
                for index in trackers.indices {
                    trackers[index].rise = config.healthRise
                    trackers[index].fall = config.healthFall
                    trackers[index].flapHoldNanoseconds = config.flapHoldNanoseconds
                    trackers[index].flapHoldMaxNanoseconds = config.flapHoldMaxNanoseconds
                }
                if config.healthIntervalNanoseconds != previous.healthIntervalNanoseconds || config.healthCheck != previous.healthCheck {
                    nextCheck = now &+ config.healthIntervalNanoseconds
                }
                if config.dnsRefreshNanoseconds != previous.dnsRefreshNanoseconds {
                    nextResolve = now &+ config.dnsRefreshNanoseconds
                }
                if config.healthCheck == .none && previous.healthCheck != .none {
                    // No checks: every backend is up, as it is from the start under `none`.
                    trackers = trackers.map { _ in Self.tracker(config, now: now) }
                    if down.contains(true) {
                        down = Array(repeating: false, count: count)
                        changed = true
                        allDownEnd = .checksOff
                        logger.info("health checks off: every backend is up", metadata: ["health_check": "none"])
                    }
                }
                if config.healthCheck != .none && previous.healthCheck == .none { firstRound = true }
            }
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
                    byIdentity[$0.description] ?? Self.tracker(config, now: now)
                }
                addresses = latest.addresses
                down = trackers.map { $0.state == .down }
                named = namedBackends()
                names = Array(repeating: NameState(), count: count)
                let now = now
                statuses.withLock { statuses in
                    statuses = zip(backends, addresses).map {
                        BackendStatus(backend: $0, address: $1, state: .up, since: now, changes: 0, lastFailure: nil)
                    }
                }
                changed = true
                allDownEnd = .poolChanged
            }
            if !named.isEmpty && now >= nextResolve {
                nextResolve = now &+ config.dnsRefreshNanoseconds
                var asked: Set<BackendResolver.Name> = []
                for index in named where asked.insert(BackendResolver.Name(backends[index])).inserted {
                    let name = BackendResolver.Name(backends[index])
                    if lookups.request(name) { continue }
                    // The previous refresh's lookup has not answered: nothing new is started.
                    let waiting = lookups.pendingSince(name).map { now &- $0 } ?? 0
                    for other in named where BackendResolver.Name(backends[other]) == name && !names[other].stuck {
                        names[other].stuck = true
                        logger.warning("backend name lookup has not answered; keeping its last address", metadata: [
                            "backend": "\(backends[other])", "address": "\(addresses[other])",
                            "waiting": "\(DurationParser.format(waiting / 1_000_000 * 1_000_000))",
                        ])
                    }
                }
            }
            lookups.answered.reset()
            for answer in lookups.takeAnswers() {
                for index in named where BackendResolver.Name(backends[index]) == answer.name {
                    if apply(answer, to: index, backends: backends, addresses: &addresses, names: &names) { changed = true }
                }
            }
            if config.healthCheck != .none && now >= nextCheck {
                nextCheck = now &+ config.healthIntervalNanoseconds
                let probes = targets(for: addresses, backends: backends)
                let outcomes = TCPProbe.run(
                    probes, timeoutMilliseconds: Int(config.healthTimeoutNanoseconds / 1_000_000), cancel: stopEvent)
                if stopping.load(ordering: .acquiring) { return }
                // By identity: the pool may have changed since this round's backends were taken.
                let refusals = routing.takeRefusalsByBackend()
                now = MonotonicClock.nanoseconds()
                for (identity, count) in refusals where count > 0 { recentRefusals[identity] = (now, count) }
                recentRefusals = recentRefusals.filter { now &- $0.value.at <= Self.refusalMemoryNanoseconds }
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
                let withoutVerdict = outcomes.prefix(count).filter { !TCPProbe.isVerdict($0) }
                if withoutVerdict.isEmpty != lastRoundHadVerdicts {
                    lastRoundHadVerdicts = withoutVerdict.isEmpty
                    if let shortage = withoutVerdict.first.flatMap({ $0 }) {
                        logger.warning("health checks could not run on this host: backends keep their state until they can", metadata: [
                            "reason": "\(shortage)", "unchecked": "\(withoutVerdict.count)",
                        ])
                    } else {
                        logger.notice("health checks run again")
                    }
                }
                for index in 0..<count {
                    var failure = outcomes[index]
                    // This host's shortage, not the backend's: no verdict, its state kept.
                    if !TCPProbe.isVerdict(failure) { continue }
                    if failure == nil, let refused = recentRefusals[backends[index].description] {
                        failure = "\(refused.count) sends refused (ICMP port unreachable, or TCP connections refused or reset)"
                    }
                    guard let state = trackers[index].record(success: failure == nil, reason: failure, now: now) else { continue }
                    down[index] = state == .down
                    changed = true
                    let backend = backends[index]
                    if state == .down, trackers[index].holdNanoseconds > 0 {
                        // Logged once, at the change: the hold itself changes nothing more.
                        logger.warning("backend down again soon after coming up: flapping, held down", metadata: [
                            "backend": "\(backend)", "reason": "\(failure ?? "")", "failures": "\(config.healthFall)",
                            "policy": "\(config.onBackendDown.rawValue)",
                            "hold_down": "\(DurationParser.format(trackers[index].holdNanoseconds))",
                            "flap_holds": "\(trackers[index].flapHolds)",
                        ])
                    } else if state == .down {
                        logger.info("backend down", metadata: [
                            "backend": "\(backend)", "reason": "\(failure ?? "")", "failures": "\(config.healthFall)",
                            "policy": "\(config.onBackendDown.rawValue)",
                        ])
                    } else {
                        logger.info("backend up", metadata: ["backend": "\(backend)", "successes": "\(config.healthRise)"])
                    }
                }
            }
            // After a round, a new policy or a new pool alike: the mode follows from the facts
            // now, whatever changed them.
            if let previous = allDownState.update(allDown: count > 0 && !down.contains(false), policy: config.onBackendDown) {
                publishAllDownChange(allDownState, from: previous, policy: config.onBackendDown, endedBy: allDownEnd)
            }
            // Routing first: whoever reads a status finds the routing already reflecting it.
            if changed { routing.publish(down: down, addresses: addresses, membership: pool.membership) }
            statuses.withLock { statuses in
                for index in 0..<count {
                    statuses[index].address = addresses[index]
                    statuses[index].state = trackers[index].state
                    statuses[index].since = trackers[index].since
                    statuses[index].changes = trackers[index].changes
                    statuses[index].lastFailure = trackers[index].lastFailure
                    statuses[index].flapHolds = trackers[index].flapHolds
                    statuses[index].heldUntil = trackers[index].heldUntil
                }
            }
            updated.signal()
        }
    }

    /// A tracker for a backend that is up as of `now`, under `config`'s rise, fall and flap damping.
    static func tracker(_ config: RelayConfiguration, now: UInt64) -> HealthTracker {
        HealthTracker(
            rise: config.healthRise, fall: config.healthFall, now: now, flapHoldNanoseconds: config.flapHoldNanoseconds,
            flapHoldMaxNanoseconds: config.flapHoldMaxNanoseconds)
    }

    /// Applies a lookup's answer to backend `index`: logs a failure once (the address stays),
    /// moves the backend to a new address if its name moved and the address is usable, or
    /// keeps the old one and logs why once.
    ///
    /// - Returns: whether the backend's address changed.
    private func apply(
        _ answer: BackendResolver.Answer, to index: Int, backends: [BackendAddress], addresses: inout [SocketAddress],
        names: inout [NameState]
    ) -> Bool {
        let backend = backends[index]
        names[index].stuck = false
        switch answer.result {
        case .failure(let error):
            if !names[index].failing {
                logger.warning("backend name did not resolve; keeping its last address", metadata: [
                    "backend": "\(backend)", "address": "\(addresses[index])", "error": "\(error)",
                ])
            }
            names[index].failing = true
            return false
        case .success(let found):
            names[index].failing = false
            guard let chosen = BackendResolver.choose(from: found, keeping: addresses[index]),
                  chosen != addresses[index] else {
                names[index].refused = nil
                return false
            }
            let listeners = self.listeners.withLock { $0 }
            let (sendProtocol, healthCheck) = settings.withLock { ($0.sendProtocol, ($0.healthCheck, $0.healthCheckPort)) }
            if let reason = BackendAddressCheck.refusal(
                of: chosen, for: index, backends: backends, addresses: addresses, listeners: listeners,
                sendProtocol: sendProtocol, healthCheck: healthCheck, earlierOnly: false
            ) {
                if names[index].refused != chosen {
                    names[index].refused = chosen
                    logger.warning("backend name moved to an address it cannot have; keeping its last address", metadata: [
                        "backend": "\(backend)", "address": "\(addresses[index])", "refused": "\(chosen)", "reason": "\(reason)",
                    ])
                }
                return false
            }
            names[index].refused = nil
            logger.info("backend address changed", metadata: [
                "backend": "\(backend)", "from": "\(addresses[index])", "to": "\(chosen)",
            ])
            addresses[index] = chosen
            return true
        }
    }

    /// Publishes a change of mode of `state` (`isFailingOpen`, `failOpenActivations`) and logs
    /// it: failing open or holding everything begins at error, and each end at info.
    ///
    /// - Parameters:
    ///   - state: the state after the change.
    ///   - previous: the mode before it.
    ///   - policy: the down-policy in force.
    ///   - endedBy: what ended every backend being down, if the change is that end.
    private func publishAllDownChange(
        _ state: AllDownState, from previous: AllDownState.Mode, policy: DownPolicy, endedBy: AllDownEnd
    ) {
        let metadata: Logger.Metadata = ["policy": "\(policy.rawValue)"]
        // Logged before it is published: whoever sees the gauge or the count change (a scrape,
        // a test) finds the log line that explains it already written.
        defer {
            activations.store(state.activations, ordering: .relaxed)
            failingOpen.store(state.isFailingOpen, ordering: .relaxed)
        }
        switch (previous, state.mode) {
        case (.failingOpen, .relaying):
            logger.info("\(endedBy.rawValue); failing open ends", metadata: metadata)
        case (.holding, .relaying):
            logger.info("\(endedBy.rawValue); relaying resumes", metadata: metadata)
        case (.failingOpen, .holding):
            // A reload to `hold` with every backend still down.
            logger.info("failing open ends: the down-policy is now hold", metadata: metadata)
        default:
            break
        }
        switch state.mode {
        case .failingOpen:
            logger.error("every backend is down: failing open, relaying each metric to its primary as if healthy", metadata: [
                "policy": "\(policy.rawValue)", "activations": "\(state.activations)",
            ])
        case .holding:
            logger.error("every backend is down: holding their lines until one recovers", metadata: metadata)
        case .relaying:
            break
        }
    }
}

/// What ended every backend being down, as the log line that says so names it.
enum AllDownEnd: String {
    /// A backend passed its checks again.
    case backendUp = "a backend is up again"
    /// A reload turned health checks off: every backend is up.
    case checksOff = "health checks are off"
    /// A reload or `replaceBackends` changed the pool, and not every backend of it is down.
    case poolChanged = "the backend pool changed"
}
