/// How a pool spreads metric names over its backends (`--hash`): each mode is a peer's
/// routing, so that a relay can take a peer's place without moving a single series.
public enum HashMode: String, CaseIterable, Sendable {
    /// FNV-1a 64 of the name, jump consistent hash over the backends in order: the Go
    /// StatsRelay's choice (and carbon-c-relay's `jump_fnv1a_ch`). Takes no weights.
    case jump
    /// The node `hashring` module (3.x) as etsy statsd's `proxy.js` configures it: 40 points
    /// per `host:port` (fewer for some backend counts), each one md5 word; the name's md5
    /// finds the next point. See `HashRing.etsy`.
    case etsy
    /// libketama as twemproxy builds it with `hash: md5`: 160 points per `host:port` at equal
    /// weight, four per md5 of `host:port-i`. See `HashRing.ketama`.
    case ketama

    /// Whether backends may carry weights (`=WEIGHT`) in this mode.
    public var takesWeights: Bool { self != .jump }

    /// Checks that `backends` suit this mode: weights only on a ring, and on a ring no backend
    /// so light that it gets no point (it would never be sent anything).
    ///
    /// - Throws: `ConfigurationError` for the first backend that does not suit.
    public func check(_ backends: [BackendAddress]) throws(ConfigurationError) {
        guard takesWeights else {
            if let weighted = backends.first(where: { $0.weight != nil }) {
                throw ConfigurationError(
                    argument: "backend", value: weighted.description + "=\(weighted.weight ?? 1)",
                    reason: "--hash jump takes no weights: use --hash etsy or ketama, or drop '=\(weighted.weight ?? 1)'")
            }
            return
        }
        let counts = HashRing.pointCounts(mode: self, weights: backends.map { $0.weight ?? 1 })
        if let empty = counts.firstIndex(of: 0) {
            let backend = backends[empty]
            throw ConfigurationError(
                argument: "backend", value: backend.description + "=\(backend.weight ?? 1)",
                reason: "weight too small beside the others: it gives this backend no point on the \(rawValue) ring, "
                    + "so it would never be sent a line")
        }
    }
}
