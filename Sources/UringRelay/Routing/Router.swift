import RelayKernel

/// Picks the one backend a metric goes to, identically in every worker and every relay that
/// has the same backend list, hash mode and health view.
///
/// The key is the line's name (the bytes before the first `:`; tags never take part). While
/// every backend is up, the backend is the hash mode's (`HashMode`): under `jump`, the jump
/// hash of the key's FNV-1a 64 over the backends in command-line order, byte for byte the Go
/// StatsRelay's choice; under `etsy` and `ketama`, the owner of the first point of the
/// `HashRing` at or after the key's md5 value, as etsy statsd's proxy.js and twemproxy choose.
///
/// When the primary is down, the policy decides. Under `rehash` the key walks a fixed sequence
/// of further candidates and takes the first that is up: under `jump`, `jump(mix(hash, 1), n)`,
/// `jump(mix(hash, 2), n)`, …; on a ring, the owners of the points that follow the key's point,
/// clockwise. Either way keys of live backends never move; a dead backend's keys spread over the
/// others; and a second failure moves only the keys that were on the newly dead backend.
///
/// When every backend is down the router fails open (Envoy's panic mode): under `rehash` and
/// `drop` each key goes to its primary as if every backend were healthy, because a check that
/// fails everywhere is more often wrong (a `tcp` check against UDP-only daemons) than every
/// daemon dead, and dropping everything loses the data either way. Under `hold` it still holds.
public struct Router: Sendable, Equatable {
    /// The result of routing one key.
    public enum Decision: Equatable, Sendable {
        /// Send to this backend, the primary (also while failing open: see `isFailingOpen`).
        case send(Int)
        /// The primary is down; send to another backend (`rehash`).
        case rehash(from: Int, to: Int)
        /// The primary is down and its lines are held for it (`hold`).
        case hold(Int)
        /// The primary is down and its lines are dropped (`drop`, while another backend is up).
        case drop(Int)
    }

    /// How many backends there are.
    public let backendCount: Int
    /// How names are spread over the backends.
    public let hashMode: HashMode
    /// The ring of the `etsy` and `ketama` modes (empty under `jump`).
    public let ring: HashRing
    /// What happens to a down backend's metrics.
    public let policy: DownPolicy
    /// Which backends are down.
    public private(set) var down: [Bool]
    /// How many are down.
    public private(set) var downCount = 0

    /// Whether every backend is down and the policy is not `hold`, so that `route` sends each
    /// key to its primary as if healthy. The processor counts lines relayed meanwhile.
    @inline(__always)
    public var isFailingOpen: Bool { downCount == backendCount && policy != .hold }

    /// Candidates tried under `rehash` and `jump` before falling back to a scan of the live
    /// backends.
    static let rehashAttempts: UInt64 = 64

    /// A `jump` router over `backendCount` backends, all up.
    ///
    /// - Precondition: `backendCount > 0`.
    public init(backendCount: Int, policy: DownPolicy = .rehash) {
        self.init(backendCount: backendCount, hashMode: .jump, ring: HashRing(), policy: policy)
    }

    /// A router over `backends` in `hashMode`, all up. A ring mode builds its ring here: one md5
    /// per point name, a few thousand for a hundred backends, once per pool and worker.
    ///
    /// - Precondition: 1-65535 backends.
    public init(backends: [BackendAddress], hashMode: HashMode, policy: DownPolicy = .rehash) {
        precondition(!backends.isEmpty, "a router needs at least one backend")
        self.init(
            backendCount: backends.count, hashMode: hashMode,
            ring: hashMode == .jump ? HashRing() : HashRing(mode: hashMode, backends: backends), policy: policy)
    }

    private init(backendCount: Int, hashMode: HashMode, ring: HashRing, policy: DownPolicy) {
        precondition(backendCount > 0, "a router needs at least one backend")
        self.backendCount = backendCount
        self.hashMode = hashMode
        self.ring = ring
        self.policy = policy
        down = Array(repeating: false, count: backendCount)
    }

    /// A router for `pool`: its backends, hash mode, policy and health view.
    public init(pool: BackendPool) {
        self.init(backends: pool.backends, hashMode: pool.hashMode, policy: pool.policy)
        for backend in pool.down.indices { setDown(backend, pool.down[backend]) }
    }

    /// Marks a backend up or down.
    public mutating func setDown(_ backend: Int, _ isDown: Bool) {
        guard down[backend] != isDown else { return }
        down[backend] = isDown
        downCount += isDown ? 1 : -1
    }

    /// The primary backend of a key, ignoring health.
    ///
    /// - Parameters:
    ///   - key: the metric name.
    ///   - hash: its FNV-1a 64 (all `jump` reads; a ring mode hashes `key` with md5 instead).
    @inline(__always)
    public func primary(key: RawSpan, hash: UInt64) -> Int {
        switch hashMode {
        case .jump: JumpHash.bucket(for: hash, buckets: backendCount)
        case .etsy, .ketama: ring.owner(of: MD5.leadingWord(key))
        }
    }

    /// Routes a metric name.
    @inline(__always)
    public func route(key: RawSpan) -> Decision {
        let hash = FNV1a.hash64(key)
        return route(key: key, hash: hash, primary: primary(key: key, hash: hash))
    }

    /// Routes a key whose primary backend is already known (from a `PrimaryCache`).
    ///
    /// - Parameter hash: the key's FNV-1a 64.
    @inline(__always)
    public func route(key: RawSpan, hash: UInt64, primary: Int) -> Decision {
        if downCount == 0 || !down[primary] { return .send(primary) }
        return fallback(key: key, hash: hash, primary: primary)
    }

    private func fallback(key: RawSpan, hash: UInt64, primary: Int) -> Decision {
        switch policy {
        case .hold: return .hold(primary)
        case .drop: return isFailingOpen ? .send(primary) : .drop(primary)
        case .rehash:
            if isFailingOpen { return .send(primary) }
            if hashMode != .jump {
                // Clockwise from the key's point: the next point of a live backend. (A ring
                // where only down backends have points cannot happen: every backend of a ring
                // has at least one point, see `HashMode.check`, but the scan below covers it.)
                var position = ring.position(of: MD5.leadingWord(key))
                for _ in 0..<ring.count {
                    position = position &+ 1 == ring.count ? 0 : position &+ 1
                    let candidate = ring.owner(at: position)
                    if !down[candidate] { return .rehash(from: primary, to: candidate) }
                }
            } else {
                for attempt in 1...Self.rehashAttempts {
                    let candidate = JumpHash.bucket(for: Self.mix(hash, attempt), buckets: backendCount)
                    if !down[candidate] { return .rehash(from: primary, to: candidate) }
                }
            }
            // Vanishingly rare with few live backends: take the live backends in order.
            let live = (0..<backendCount).filter { !down[$0] }
            return .rehash(from: primary, to: live[JumpHash.bucket(for: Self.mix(hash, 0), buckets: live.count)])
        }
    }

    /// A fixed, well-spread 64-bit mix of the key hash and the attempt number (splitmix64's
    /// finaliser), so every relay computes the same candidate sequence.
    @inline(__always)
    static func mix(_ hash: UInt64, _ attempt: UInt64) -> UInt64 {
        var value = hash &+ attempt &* 0x9e37_79b9_7f4a_7c15
        value = (value ^ (value >> 30)) &* 0xbf58_476d_1ce4_e5b9
        value = (value ^ (value >> 27)) &* 0x94d0_49bb_1331_11eb
        return value ^ (value >> 31)
    }

    /// The backend index for a metric name while every backend is up (for `statsrelay hash`).
    public func backend(forName name: String) -> Int {
        Self.withKey(name) { key in primary(key: key, hash: FNV1a.hash64(key)) }
    }

    /// The decision for a metric name given the current health view.
    public func route(name: String) -> Decision {
        Self.withKey(name) { key in route(key: key) }
    }

    /// The backend index for a key while every backend is up.
    @inline(__always)
    public func backend(forKey key: RawSpan) -> Int {
        primary(key: key, hash: FNV1a.hash64(key))
    }

    /// The value `hashMode` places `name` by: its FNV-1a 64 under `jump`, the first 4 bytes of
    /// its md5 read little-endian on a ring (for `statsrelay hash`).
    public static func keyValue(forName name: String, hashMode: HashMode) -> UInt64 {
        withKey(name) { key in hashMode == .jump ? FNV1a.hash64(key) : UInt64(MD5.leadingWord(key)) }
    }

    /// Calls `body` with the UTF-8 bytes of `name`.
    private static func withKey<Result>(_ name: String, _ body: (RawSpan) -> Result) -> Result {
        var copy = name
        return copy.withUTF8 { body($0.span.bytes) }
    }
}
