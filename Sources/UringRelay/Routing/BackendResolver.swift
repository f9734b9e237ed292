import RelayKernel
import Synchronization

/// Looks backend names up on threads of its own, so that a resolver that never answers
/// (`getaddrinfo(3)` has no timeout of its own beyond `/etc/resolv.conf`'s, and an NSS module
/// may have none at all) never delays a stop, a health check or the lookup of another name.
///
/// - At most one lookup per name (and port) is queued or running: asking again while one is
///   pending does nothing (`request` says so), so a name whose resolver hangs holds one thread,
///   not one per refresh.
/// - At most `maximumInFlight` lookups run at once; the others queue, first asked first run.
///   A lookup thread takes the next queued name when it is done, and ends when none is left.
/// - Answers are kept until taken (`takeAnswers`) and `answered` is signalled for each, so the
///   caller waits on an eventfd with its other events and never blocks on a lookup.
/// - `close` abandons the lookups: queued ones never run, running ones are never joined (a
///   thread stuck in `getaddrinfo` cannot be interrupted); each is detached and ends whenever
///   its lookup returns, its answer discarded. The threads hold only this object's shared
///   state, never the caller's, so nothing they touch goes away under them.
public final class BackendResolver: Sendable {
    /// Resolves a host and port to addresses (injectable so tests can change what a name points
    /// to, or make it hang). Called on a lookup thread.
    public typealias Resolver = @Sendable (String, UInt16) throws -> [SocketAddress]

    /// What is looked up: a backend's host name and its port.
    public struct Name: Hashable, Sendable, CustomStringConvertible {
        public var host: String
        public var port: UInt16

        public init(host: String, port: UInt16) {
            self.host = host
            self.port = port
        }

        /// The name of `backend`.
        public init(_ backend: BackendAddress) { self.init(host: backend.host, port: backend.port) }

        public var description: String { "\(host):\(port)" }
    }

    /// The system's resolver: `getaddrinfo(3)` through `SocketAddress.resolve`.
    public static let system: Resolver = { host, port in try SocketAddress.resolve(host: host, port: port) }

    /// How many lookups run at once by default. Each costs a thread (its stack is virtual
    /// memory until touched) and up to two UDP sockets while it runs (`getaddrinfo` asks for
    /// IPv4 and IPv6 addresses).
    public static let defaultMaximumInFlight = 4

    /// One lookup's result.
    public struct Answer: Sendable {
        /// The name looked up.
        public var name: Name
        /// Every address it resolved to (`resolver` order), or why it did not resolve.
        public var result: Result<[SocketAddress], ResolutionError>
    }

    private struct State: Sendable {
        var closed = false
        /// Names asked for and not yet answered (queued or running), with the monotonic
        /// nanoseconds of the request.
        var pending: [Name: UInt64] = [:]
        var queue: [Name] = []
        var running = 0
        var answers: [Answer] = []
    }

    /// What the lookup threads share with the owner; they never hold more than this.
    private final class Shared: Sendable {
        let state = Mutex(State())
        let answered: WakeupEvent
        let resolver: Resolver
        let maximumInFlight: Int

        init(resolver: @escaping Resolver, maximumInFlight: Int) throws(Errno) {
            answered = try WakeupEvent()
            self.resolver = resolver
            self.maximumInFlight = max(1, maximumInFlight)
        }
    }

    private let shared: Shared

    /// Signalled whenever an answer arrives (reset it before `takeAnswers`, so that one arriving
    /// in between signals it again).
    public var answered: WakeupEvent { shared.answered }

    /// A resolver service with no lookup running.
    ///
    /// - Throws: `Errno` when the eventfd cannot be created.
    public init(resolver: @escaping Resolver = BackendResolver.system, maximumInFlight: Int = BackendResolver.defaultMaximumInFlight) throws(Errno) {
        shared = try Shared(resolver: resolver, maximumInFlight: maximumInFlight)
    }

    /// Asks for `name` to be looked up.
    ///
    /// - Returns: `false` when a lookup of `name` is already queued or running (nothing new is
    ///   started), or the resolver is closed; `true` when one was queued or started.
    @discardableResult
    public func request(_ name: Name) -> Bool {
        let (queued, start) = shared.state.withLock { state -> (Bool, Bool) in
            guard !state.closed, state.pending[name] == nil else { return (false, false) }
            state.pending[name] = MonotonicClock.nanoseconds()
            state.queue.append(name)
            guard state.running < shared.maximumInFlight else { return (true, false) }
            state.running += 1
            return (true, true)
        }
        if start { Self.startThread(shared) }
        return queued
    }

    /// When the pending lookup of `name` was asked for (monotonic nanoseconds), or `nil` when
    /// none is pending.
    public func pendingSince(_ name: Name) -> UInt64? { shared.state.withLock { $0.pending[name] } }

    /// Takes every answer that arrived since the last call, oldest first.
    public func takeAnswers() -> [Answer] {
        shared.state.withLock { state in
            defer { state.answers = [] }
            return state.answers
        }
    }

    /// Abandons every lookup: queued ones never run, running ones finish unwatched and their
    /// answers are dropped. Returns at once.
    public func close() {
        shared.state.withLock { state in
            state.closed = true
            state.queue = []
            state.pending = [:]
            state.answers = []
        }
    }

    /// Starts a lookup thread that works through the queue; its slot in `running` is taken.
    private static func startThread(_ shared: Shared) {
        do throws(Errno) {
            // Dropped at once: `WorkerThread`'s deinit detaches the thread, which is never joined.
            _ = try WorkerThread(name: "statsrelay-dns", cpu: nil) { _ in work(shared) }
        } catch {
            // No thread: what it would have taken from the queue fails now, visibly.
            let failed = shared.state.withLock { state -> [String] in
                state.running -= 1
                guard state.running == 0 else { return [] }
                let names = state.queue
                state.queue = []
                for name in names {
                    state.pending[name] = nil
                    state.answers.append(Answer(name: name, result: .failure(
                        ResolutionError(host: name.host, reason: "no lookup thread (pthread_create: \(error.operatorDescription))"))))
                }
                return names.map(\.host)
            }
            if !failed.isEmpty { shared.answered.signal() }
        }
    }

    /// A lookup thread's life: take the next queued name, look it up, publish the answer, until
    /// the queue is empty (or the resolver is closed).
    private static func work(_ shared: Shared) {
        while let next = shared.state.withLock({ state -> Name? in
            guard !state.closed, !state.queue.isEmpty else {
                state.running -= 1
                return nil
            }
            return state.queue.removeFirst()
        }) {
            let result: Result<[SocketAddress], ResolutionError>
            do {
                result = .success(try shared.resolver(next.host, next.port))
            } catch let error as ResolutionError {
                result = .failure(error)
            } catch {
                result = .failure(ResolutionError(host: next.host, reason: "\(error)"))
            }
            let kept = shared.state.withLock { state -> Bool in
                guard !state.closed else { return false }
                state.pending[next] = nil
                state.answers.append(Answer(name: next, result: result))
                return true
            }
            if kept { shared.answered.signal() }
        }
    }

    /// The address a backend is sent to, from the addresses its name resolved to: the current
    /// one if the name still lists it (a name with several addresses does not move between
    /// them at each refresh), else the first (IPv4 first, `SocketAddress.resolve`); canonical
    /// (`SocketAddress.canonical`), so that spellings of one address compare equal.
    ///
    /// The one place that turns a lookup's answer into a backend address: start-up, a change of
    /// backends and every refresh go through it.
    /// - Returns: `nil` when `answers` is empty.
    public static func choose(from answers: [SocketAddress], keeping current: SocketAddress? = nil) -> SocketAddress? {
        let candidates = answers.map(\.canonical)
        if let current, candidates.contains(current.canonical) { return current.canonical }
        return candidates.first
    }
}

/// Why a backend has no address: its name did not resolve, or the resolver has not answered.
///
/// Renders as `resolve backend statsd.internal:8125: Temporary failure in name resolution
/// (resolver)`: the relay's exit status for it is 75 (`EX_TEMPFAIL`), not a usage error.
public struct BackendResolutionError: Error, CustomStringConvertible, Sendable {
    /// The backend whose name has no address.
    public var backend: BackendAddress
    /// The resolver's reason, or how long it has not answered.
    public var reason: String

    public init(backend: BackendAddress, reason: String) {
        self.backend = backend
        self.reason = reason
    }

    public var description: String { "resolve backend \(backend): \(reason) (resolver)" }
}

/// The addresses of a list of backends, looked up concurrently (`BackendResolver`) and waited
/// for: at start-up and for a change of backends.
///
/// Numeric hosts need no lookup. The wait ends when every name has answered, when `limit`
/// passes, or — for a caller that waits on `answered` itself, as the command does with its
/// signals — whenever the caller stops waiting; `abandon` then lets the lookups go.
public final class BackendLookup: Sendable {
    /// How long a start-up waits for the resolver by default: longer than `getaddrinfo`'s own
    /// default bound (5 s per try, 2 tries per name server), shorter than systemd's stop timeout.
    public static let defaultLimitNanoseconds: UInt64 = 30_000_000_000

    /// The backends, in routing order.
    public let backends: [BackendAddress]
    private let resolver: BackendResolver
    private let started: UInt64
    private let limitNanoseconds: UInt64
    private let results: Mutex<[BackendResolver.Name: Result<[SocketAddress], ResolutionError>]>
    /// The names that need a lookup.
    private let names: Set<BackendResolver.Name>

    /// Starts looking up every backend name (numeric hosts are taken as they are).
    ///
    /// - Parameters:
    ///   - resolver: resolves one name (called on a lookup thread).
    ///   - limitNanoseconds: how long `wait` waits for the resolver.
    /// - Throws: `SystemCallError` when the lookup's eventfd cannot be created.
    public init(
        backends: [BackendAddress], resolver: @escaping BackendResolver.Resolver = BackendResolver.system,
        limitNanoseconds: UInt64 = BackendLookup.defaultLimitNanoseconds
    ) throws(SystemCallError) {
        self.backends = backends
        do throws(Errno) { self.resolver = try BackendResolver(resolver: resolver) } catch {
            throw SystemCallError("eventfd", "backend name lookups", error)
        }
        started = MonotonicClock.nanoseconds()
        self.limitNanoseconds = limitNanoseconds
        results = Mutex([:])
        let named = backends.filter { SocketAddress(numericHost: $0.host, port: $0.port) == nil }
        names = Set(named.map(BackendResolver.Name.init))
        for name in names { self.resolver.request(name) }
    }

    /// Signalled when an answer arrives; `collect()` takes it.
    public var answered: WakeupEvent { resolver.answered }

    /// Nanoseconds left until the limit (0 once it has passed).
    public var remainingNanoseconds: UInt64 {
        let elapsed = MonotonicClock.nanoseconds() &- started
        return elapsed >= limitNanoseconds ? 0 : limitNanoseconds - elapsed
    }

    /// Takes the answers that arrived and says whether every name has answered.
    public func collect() -> Bool {
        answered.reset()
        let answers = resolver.takeAnswers()
        return results.withLock { results in
            for answer in answers { results[answer.name] = answer.result }
            return names.allSatisfy { results[$0] != nil }
        }
    }

    /// Waits until every name has answered or the limit passes, then returns the addresses.
    ///
    /// - Parameter running: as `addresses(keeping:)`.
    /// - Throws: `BackendResolutionError` as `addresses()` does.
    public func wait(keeping running: [String: SocketAddress] = [:]) throws(BackendResolutionError) -> [SocketAddress] {
        while !collect() {
            let left = remainingNanoseconds
            if left == 0 { break }
            _ = answered.wait(timeoutNanoseconds: left)
        }
        return try addresses(keeping: running)
    }

    /// Every backend's address, in routing order (`BackendResolver.choose`), from what has
    /// been collected.
    ///
    /// - Parameter running: the addresses in use, by backend identity (`Relay.addressesInUse`):
    ///   a backend that stays keeps its address while its name still lists it, as a refresh
    ///   keeps it (a reload does not move a name with several addresses to another of them).
    /// - Throws: `BackendResolutionError` for the first backend, in routing order, whose name
    ///   did not resolve or has not been answered yet (then the lookups are abandoned).
    public func addresses(keeping running: [String: SocketAddress] = [:]) throws(BackendResolutionError) -> [SocketAddress] {
        let results = results.withLock { $0 }
        var addresses: [SocketAddress] = []
        for backend in backends {
            if let numeric = SocketAddress(numericHost: backend.host, port: backend.port) {
                addresses.append(numeric.canonical)
                continue
            }
            switch results[BackendResolver.Name(backend)] {
            case .success(let answers)?:
                guard let chosen = BackendResolver.choose(from: answers, keeping: running[backend.description]) else {
                    throw BackendResolutionError(backend: backend, reason: "no address")
                }
                addresses.append(chosen)
            case .failure(let error)?:
                throw BackendResolutionError(backend: backend, reason: error.reason)
            case nil:
                abandon()
                let waited = Double((MonotonicClock.nanoseconds() &- started) / 1_000_000) / 1_000
                throw BackendResolutionError(
                    backend: backend, reason: "no answer from the resolver after \(waited)s")
            }
        }
        return addresses
    }

    /// The backends whose names have no answer collected yet, in routing order.
    public var unanswered: [BackendAddress] {
        let answered = results.withLock { Set($0.keys) }
        return backends.filter { names.contains(BackendResolver.Name($0)) && !answered.contains(BackendResolver.Name($0)) }
    }

    /// Lets the lookups go (see `BackendResolver.close`).
    public func abandon() { resolver.close() }
}
