/// A consistent-hash ring (ketama's "continuum"): 32-bit points in ascending order, each owned
/// by a backend. A key's value is the first 4 bytes of its name's md5 read little-endian, and
/// its backend owns the first point at or after that value, wrapping past the largest point to
/// the first one. The `etsy` and `ketama` modes differ only in how many points a backend gets
/// and how they are made.
///
/// ```
///  0                                                              2³²-1
///  |--p0(b1)----p1(b0)---------p2(b2)--p3(b0)-------------p4(b1)----|
///          ^ key: goes to b0 (p1)                               ^ key: wraps to b1 (p0)
/// ```
///
/// Points are named after the backend as written, `host:port-i` (an IPv6 host unbracketed, as
/// the peers join host and port): the resolved address and the instance label take no part.
/// Equal points (rare: a few thousand 32-bit values seldom collide) stay in the order they were
/// made, backend by backend, as V8's stable sort leaves them for hashring, and a lookup takes
/// the first of them, as both peers' lookups do. twemproxy's `qsort` promises no order among
/// equal points, so on such a tie between two backends it may pick the other one.
public struct HashRing: Sendable, Equatable {
    /// The points, ascending.
    public let points: [UInt32]
    /// The backend index owning each point.
    public let owners: [UInt16]

    /// A ring without points (the `jump` mode's).
    public init() {
        points = []
        owners = []
    }

    /// The ring of `mode` over `backends` (each `weight`, default 1).
    ///
    /// - Precondition: `mode` is a ring mode (not `jump`); 1-65535 backends.
    public init(mode: HashMode, backends: [BackendAddress]) {
        precondition(mode != .jump, "jump has no ring")
        precondition(!backends.isEmpty && backends.count <= 65_535, "1-65535 backends")
        let counts = Self.pointCounts(mode: mode, weights: backends.map { $0.weight ?? 1 })
        // Sorted by value, then by the order made: (value << 32 | sequence).
        var keyed: [UInt64] = []
        var madeBy: [UInt16] = []
        keyed.reserveCapacity(counts.reduce(0, +))
        madeBy.reserveCapacity(keyed.capacity)
        for (index, backend) in backends.enumerated() {
            let perDigest = mode == .ketama ? 4 : 1
            for i in 0..<counts[index] / perDigest {
                let digest = MD5.hash(Self.pointName(backend, i))
                for word in 0..<perDigest {
                    keyed.append(UInt64(digest.word(word)) << 32 | UInt64(keyed.count))
                    madeBy.append(UInt16(index))
                }
            }
        }
        keyed.sort()
        points = keyed.map { UInt32(truncatingIfNeeded: $0 >> 32) }
        owners = keyed.map { madeBy[Int(truncatingIfNeeded: $0 & 0xffff_ffff)] }
    }

    /// The name of `backend`'s digest number `index`: `host:port-index`.
    public static func pointName(_ backend: BackendAddress, _ index: Int) -> String {
        "\(backend.host):\(backend.port)-\(index)"
    }

    /// How many points each backend of the given weights gets on `mode`'s ring, in order.
    ///
    /// - `etsy` (hashring's `continuum`): `Math.floor(w / W * 40 * n)` for weight `w` of total
    ///   `W` among `n` backends, in IEEE doubles from left to right. With equal weights that is
    ///   40, but 39 for 7, 14, 28, 49, 56, 98 … backends, where `1/n * 40 * n` rounds to just
    ///   below 40; hashring (and so proxy.js) gives 39 there, and so does this.
    /// - `ketama` (twemproxy's `ketama_update`): `floorf((float)(pct * 160 / 4 * (float)n +
    ///   0.0000000001)) * 4` with `pct = (float)w / (float)W`: single precision throughout but
    ///   for the addition, which C does in double. 160 at equal weight for few backends, 156
    ///   each for 100 (the float rounds below 40 there too).
    public static func pointCounts(mode: HashMode, weights: [Int]) -> [Int] {
        let total = weights.reduce(0, +)
        let n = weights.count
        switch mode {
        case .jump:
            return weights.map { _ in 0 }
        case .etsy:
            return weights.map { weight in
                let percentage = Double(weight) / Double(total)
                return Int((percentage * 40 * Double(n)).rounded(.down))
            }
        case .ketama:
            return weights.map { weight in
                let pct: Float = Float(weight) / Float(total)
                let scaled: Float = pct * 160 / 4 * Float(n)
                return Int(Float(Double(scaled) + 0.000_000_000_1).rounded(.down)) * 4
            }
        }
    }

    /// How many points the ring has.
    @inline(__always)
    public var count: Int { points.count }

    /// The position of the first point at or after `value`, or 0 past the last point.
    /// (libketama's and hashring's binary search gives the same position for every value.)
    @inline(__always)
    public func position(of value: UInt32) -> Int {
        var low = 0
        var high = points.count
        while low < high {
            let middle = (low &+ high) &>> 1
            if points[middle] < value { low = middle &+ 1 } else { high = middle }
        }
        return low == points.count ? 0 : low
    }

    /// The backend owning the point at `position`.
    @inline(__always)
    public func owner(at position: Int) -> Int { Int(owners[position]) }

    /// The backend of a key whose value (md5 leading word) is `value`.
    @inline(__always)
    public func owner(of value: UInt32) -> Int { owner(at: position(of: value)) }
}
