import RelayKernel

/// The mirror pool (`--mirror`): a second set of backends that gets a copy of the traffic (or
/// of a stable sample of its metric names), for migrations and shadow testing.
///
/// Each worker routes every line it forwards to the primary pool as usual and, when the line's
/// routing key is sampled, packs a copy of it for the mirror backend the mirror's own hash mode
/// (`--mirror-hash`) picks, into batches and send slots of the mirror's own
/// (`BatchAssembler.appendMirror`), sent on sockets of its own. What the mirror guarantees and
/// what it does not is in docs/operations.md#mirroring; in short: the primary pool never waits
/// for the mirror and never loses a line because of it, and the mirror is best effort (no
/// health checks, no holds, no replay; its lines are dropped and counted when its slots are
/// all in use).
///
/// The mirror list is fixed for the process's life (a reload that changes it is refused as
/// needing a restart): its sockets are opened by each worker at start and never replaced.
public struct MirrorPool: Sendable, Equatable {
    /// The mirror backends and where they are, in the mirror's routing order, with its hash
    /// mode. Its down policy and health view are unused: the mirror is never marked down.
    public var pool: BackendPool
    /// Which routing keys are mirrored (`--mirror-sample`).
    public var sample: MirrorSample

    /// What a mirror backend's identity starts with (its counters' and delivery ledger's key):
    /// a mirror backend is never confused with a primary one at the same address.
    public static let identityPrefix = "mirror/"

    /// A mirror of `backends` at `addresses`, placed by `hashMode`, sampling at `rate`.
    ///
    /// - Precondition: one address per backend, at least one backend, `0 < rate <= 1`.
    public init(backends: [BackendAddress], addresses: [SocketAddress], hashMode: HashMode, rate: Double) {
        precondition(!backends.isEmpty, "a mirror pool needs a backend")
        pool = BackendPool(backends: backends, addresses: addresses, hashMode: hashMode, policy: .rehash)
        sample = MirrorSample(rate: rate)
    }

    /// How many backends the mirror has.
    public var count: Int { pool.count }

    /// The mirror backends' identities as sockets and counters know them: `mirror/host:port`.
    public var identities: [String] { pool.identities.map { Self.identityPrefix + $0 } }

    /// Whether `identity` names a mirror backend.
    @inline(__always)
    public static func isMirror(identity: String) -> Bool { identity.hasPrefix(identityPrefix) }
}

/// A stable sample of routing keys (`--mirror-sample RATE`): a key is mirrored or not by its
/// FNV-1a 64 hash alone, so every line of a series is mirrored (a sampled series is complete)
/// on every worker and every relay, whatever the primary pool.
///
/// The hash is first mixed with a constant of its own and the splitmix64 finaliser (Steele,
/// Lea and Flood's `mix64`), then compared with `rate × 2⁶⁴`. The jump hash reads the raw
/// hash as the seed of its own generator, and the rehash fallback adds multiples of the golden
/// ratio before its mix, so whether a name is mirrored says nothing about which primary backend
/// it lands on: a mirror at 10 % takes about 10 % of every primary backend's names.
public struct MirrorSample: Sendable, Equatable {
    /// Keys whose mixed hash is at most this are mirrored (`.max`: all of them).
    public let threshold: UInt64
    /// The rate asked for.
    public let rate: Double

    /// Mixes the sample's hash apart from the routing's (ASCII `mirror_s`).
    static let salt: UInt64 = 0x6d69_7272_6f72_5f73

    /// A sample of about `rate` of all keys.
    ///
    /// - Precondition: `0 < rate <= 1`.
    public init(rate: Double) {
        precondition(rate > 0 && rate <= 1, "a mirror sample rate is in (0, 1]")
        self.rate = rate
        // 2⁶⁴ × rate, less one so that 1.0 means every key; Double has 53 bits, plenty for a share.
        let scaled = rate * 18_446_744_073_709_551_616.0
        threshold = scaled >= 18_446_744_073_709_551_615.0 ? .max : max(UInt64(scaled.rounded(.down)), 1) - 1
    }

    /// The value a key's hash is sampled by: uniform over 64 bits, unrelated to the routing.
    @inline(__always)
    public static func mixed(_ hash: UInt64) -> UInt64 {
        var value = hash ^ salt
        value = (value ^ (value >> 30)) &* 0xbf58_476d_1ce4_e5b9
        value = (value ^ (value >> 27)) &* 0x94d0_49bb_1331_11eb
        return value ^ (value >> 31)
    }

    /// Whether the key of FNV-1a 64 `hash` is mirrored.
    @inline(__always)
    public func contains(hash: UInt64) -> Bool { Self.mixed(hash) <= threshold }

    /// Whether `key` (a routing key: the name, or the name and sorted tags) is mirrored.
    public func contains(key: String) -> Bool {
        var copy = key
        return copy.withUTF8 { contains(hash: FNV1a.hash64(UnsafeRawBufferPointer($0).bytes)) }
    }
}
