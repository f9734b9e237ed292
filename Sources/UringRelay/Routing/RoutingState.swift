import RelayKernel
import Synchronization

/// The backend pool every worker routes by: published by the health monitor (health view,
/// re-resolved addresses) and by whoever changes the backends (a reload, a test), and picked
/// up by each worker once per loop turn (never per datagram).
///
/// Publishing bumps the pool's generation; a worker compares it with the one it last applied
/// (one atomic load per turn) and, when it differs, copies the new pool under the lock.
/// Send refusals flow the other way without touching the send path: each worker counts them
/// in its own counters (`packets_refused`, `send_retries`), which it publishes to its
/// `CounterBoard` at most every 100 ms anyway; the monitor reads the boards at each check and
/// takes what grew since (`takeRefusalsByBackend`).
public final class RoutingState: Sendable {
    private let published = Atomic<UInt64>(0)
    private let pool: Mutex<BackendPool>
    private let refusals = Mutex(RefusalIntake())
    private let subscribers = Mutex<[WakeupEvent]>([])

    /// The workers' boards the monitor reads refusals from, each with the counts already taken.
    private struct RefusalIntake {
        var boards: [CounterBoard] = []
        var taken: [[String: UInt64]] = []
    }

    /// Starts from `pool` (every backend up).
    public init(pool: BackendPool) {
        self.pool = Mutex(pool)
    }

    /// A pool of bare addresses (identities `host:port`), every backend up, policy `rehash`.
    public convenience init(addresses: [SocketAddress]) {
        let backends = addresses.map { address in
            BackendAddress(host: address.host, port: address.port, instance: nil)
        }
        self.init(pool: BackendPool(backends: backends, addresses: addresses, policy: .rehash))
    }

    /// The latest generation published.
    @inline(__always)
    public var generation: UInt64 { published.load(ordering: .acquiring) }

    /// The latest pool.
    public var current: BackendPool { pool.withLock { $0 } }

    /// Publishes a new health view and address list for the current backends, and wakes every
    /// subscribed worker so an idle one applies it (and replays held batches) without traffic.
    ///
    /// - Parameter membership: the membership generation the view was computed for; a view
    ///   for backends that have since been replaced is ignored.
    public func publish(down: [Bool], addresses: [SocketAddress], membership: UInt64? = nil) {
        update { current in
            guard membership.map({ $0 == current.membership }) ?? true, down.count == current.count,
                  addresses.count == current.count else { return false }
            current.down = down
            current.addresses = addresses
            return true
        }
    }

    /// Replaces the backends: a pool change that every worker applies at a turn boundary after
    /// sending the old pool's batches. A backend that stays keeps its health state; a new one
    /// starts up (the health monitor takes it from there).
    ///
    /// - Precondition: one address per backend, at least one backend.
    public func replaceBackends(_ backends: [BackendAddress], addresses: [SocketAddress], policy: DownPolicy? = nil) {
        precondition(!backends.isEmpty && backends.count == addresses.count)
        update { current in
            var wasDown: [String: Bool] = [:]
            for (index, identity) in current.identities.enumerated() { wasDown[identity] = current.down[index] }
            current.backends = backends
            current.addresses = addresses
            current.down = backends.map { wasDown[$0.description] ?? false }
            if let policy { current.policy = policy }
            current.membership &+= 1
            return true
        }
    }

    private func update(_ change: (inout BackendPool) -> Bool) {
        let changed = pool.withLock { current -> Bool in
            guard change(&current) else { return false }
            current.generation &+= 1
            published.store(current.generation, ordering: .releasing)
            return true
        }
        guard changed else { return }
        for subscriber in subscribers.withLock({ $0 }) { subscriber.signal() }
    }

    /// Signals `event` at every publication: a worker's control event (`WorkerControl.wakeup`),
    /// so an idle worker wakes and takes the new pool at its next turn.
    public func subscribe(_ event: WakeupEvent) {
        subscribers.withLock { $0.append(event) }
    }

    /// Stops signalling `event` (a worker that has stopped).
    public func unsubscribe(_ event: WakeupEvent) {
        subscribers.withLock { $0.removeAll { $0 === event } }
    }

    /// Reads a worker's refusals from `board` from now on (once per board; at a worker's start).
    public func watchRefusals(on board: CounterBoard) {
        refusals.withLock { intake in
            guard !intake.boards.contains(where: { $0 === board }) else { return }
            intake.boards.append(board)
            intake.taken.append(board.counters.map(Self.refusals(in:)) ?? [:])
        }
    }

    /// Takes every backend's refusals since the last call, by identity, summed over the
    /// workers as each last published them: packets refused by ICMP port unreachable, and
    /// sends that met such a refusal still pending. Called by the health monitor, off the
    /// data path.
    public func takeRefusalsByBackend() -> [String: UInt64] {
        refusals.withLock { intake in
            var fresh: [String: UInt64] = [:]
            for index in intake.boards.indices {
                guard let counters = intake.boards[index].counters else { continue }
                let now = Self.refusals(in: counters)
                for (identity, total) in now {
                    let before = intake.taken[index][identity] ?? 0
                    if total > before { fresh[identity, default: 0] &+= total - before }
                }
                intake.taken[index] = now
            }
            return fresh
        }
    }

    /// A worker's refusal evidence per backend identity: refused packets plus retried sends,
    /// plus a TCP backend's failed connections (refused, timed out, reset).
    private static func refusals(in counters: RelayCounters) -> [String: UInt64] {
        var byBackend: [String: UInt64] = [:]
        for (identity, value) in counters.values(of: .packetsRefused) { byBackend[identity, default: 0] &+= value }
        for (identity, value) in counters.values(of: .sendRetries) { byBackend[identity, default: 0] &+= value }
        for (identity, value) in counters.values(of: .tcpConnectionFailures) { byBackend[identity, default: 0] &+= value }
        return byBackend
    }
}
