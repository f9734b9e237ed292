import RelayKernel

/// The backends one relay routes to, as one value: who they are, where they are, how names
/// are spread over them and what happens when one is down.
///
/// A pool is published whole through `RoutingState` and applied by each worker at a loop turn
/// boundary, like twemproxy's `server_pool`: every line is routed wholly by one pool. Two
/// generation numbers tell what changed: `membership` when the backends themselves (their
/// identities or order) change, which makes a worker close and send the old pool's batches
/// before it switches; `generation` for any change, including the health view and addresses
/// (applied in place).
public struct BackendPool: Sendable, Equatable {
    /// The backends as the operator wrote them, in routing order (their identity).
    public var backends: [BackendAddress]
    /// Where each backend is now (resolved; DNS re-resolution may move it).
    public var addresses: [SocketAddress]
    /// How names are spread over the backends (`--hash`); with the backends and their weights,
    /// it makes the ring a worker builds when it takes the pool (`Router(pool:)`).
    public var hashMode: HashMode = .jump
    /// What happens to a down backend's lines.
    public var policy: DownPolicy
    /// Which backends are down (the health view).
    public var down: [Bool]
    /// Bumped whenever anything in the pool changes.
    public var generation: UInt64 = 0
    /// Bumped when the backends (identities or order) change.
    public var membership: UInt64 = 0
    /// How many of the last backends are a mirror pool's, appended only to open and follow
    /// sockets (`RelayCore.sendPool`); their identities are prefixed `mirror/`. 0 for a pool
    /// lines are routed by.
    public var mirrorTail = 0

    /// A pool with every backend up.
    ///
    /// - Precondition: one address per backend.
    public init(backends: [BackendAddress], addresses: [SocketAddress], hashMode: HashMode = .jump, policy: DownPolicy) {
        precondition(backends.count == addresses.count, "one address per backend")
        self.backends = backends
        self.addresses = addresses
        self.hashMode = hashMode
        self.policy = policy
        down = Array(repeating: false, count: backends.count)
    }

    /// How many backends the pool has.
    public var count: Int { backends.count }

    /// The backends' identities (`host:port[:instance]`), the keys of per-backend counters.
    public var identities: [String] {
        guard mirrorTail > 0 else { return backends.map(\.description) }
        return backends.indices.map { index in
            index < count - mirrorTail ? backends[index].description : MirrorPool.identityPrefix + backends[index].description
        }
    }

    /// This pool with `mirror`'s backends appended past its own (`mirrorTail`): the sockets a
    /// worker sends on, the primary's at their routing positions, the mirror's after them.
    public func appendingMirror(_ mirror: MirrorPool?) -> BackendPool {
        guard let mirror else { return self }
        var joined = self
        joined.backends += mirror.pool.backends
        joined.addresses += mirror.pool.addresses
        joined.down += mirror.pool.down
        joined.mirrorTail = mirror.count
        return joined
    }

    /// For each backend of `self`, its position in `other`, or `nil` if `other` lacks it.
    public func positions(in other: BackendPool) -> [Int?] {
        var position: [String: Int] = [:]
        for (index, identity) in other.identities.enumerated() { position[identity] = index }
        return identities.map { position[$0] }
    }
}
