import RelayKernel

/// Picks the one backend a metric goes to, identically in every worker and every relay that
/// has the same backend list and the same health view.
///
/// The key is the line's name (the bytes before the first `:`; tags never take part). While
/// every backend is up, the backend is the jump hash of the key's FNV-1a 64 over the backends
/// in command-line order: byte for byte the Go StatsRelay's choice.
///
/// When the primary is down, the policy decides. Under `rehash` the key walks a fixed sequence
/// of further candidates, `jump(mix(hash, 1), n)`, `jump(mix(hash, 2), n)`, … and takes the
/// first that is up. Keys of live backends never move; a dead backend's keys spread evenly over
/// the others; and a second failure moves only the keys that were on the newly dead backend.
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

    /// Candidates tried under `rehash` before falling back to a scan of the live backends.
    static let rehashAttempts: UInt64 = 64

    /// A router over `backendCount` backends, all up.
    ///
    /// - Precondition: `backendCount > 0`.
    public init(backendCount: Int, policy: DownPolicy = .rehash) {
        precondition(backendCount > 0, "a router needs at least one backend")
        self.backendCount = backendCount
        self.policy = policy
        down = Array(repeating: false, count: backendCount)
    }

    /// Marks a backend up or down.
    public mutating func setDown(_ backend: Int, _ isDown: Bool) {
        guard down[backend] != isDown else { return }
        down[backend] = isDown
        downCount += isDown ? 1 : -1
    }

    /// The primary backend of a key: the Go StatsRelay's choice, ignoring health.
    @inline(__always)
    public func primary(forHash hash: UInt64) -> Int {
        JumpHash.bucket(for: hash, buckets: backendCount)
    }

    /// Routes a metric name.
    @inline(__always)
    public func route(key: RawSpan) -> Decision {
        route(hash: FNV1a.hash64(key))
    }

    /// Routes a key by its FNV-1a 64 hash.
    @inline(__always)
    public func route(hash: UInt64) -> Decision {
        route(hash: hash, primary: primary(forHash: hash))
    }

    /// Routes a key whose primary backend is already known (from a `PrimaryCache`).
    @inline(__always)
    public func route(hash: UInt64, primary: Int) -> Decision {
        if downCount == 0 || !down[primary] { return .send(primary) }
        return fallback(hash: hash, primary: primary)
    }

    private func fallback(hash: UInt64, primary: Int) -> Decision {
        switch policy {
        case .hold: return .hold(primary)
        case .drop: return isFailingOpen ? .send(primary) : .drop(primary)
        case .rehash:
            if isFailingOpen { return .send(primary) }
            for attempt in 1...Self.rehashAttempts {
                let candidate = JumpHash.bucket(for: Self.mix(hash, attempt), buckets: backendCount)
                if !down[candidate] { return .rehash(from: primary, to: candidate) }
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
        primary(forHash: FNV1a.hash64(name))
    }

    /// The decision for a metric name given the current health view.
    public func route(name: String) -> Decision {
        route(hash: FNV1a.hash64(name))
    }

    /// The backend index for a key while every backend is up.
    @inline(__always)
    public func backend(forKey key: RawSpan) -> Int {
        primary(forHash: FNV1a.hash64(key))
    }
}
