/// SplitMix64: a tiny seeded generator, so every run with the same seed sends the same bytes.
public struct SplitMix64: Sendable {
    /// The generator state.
    private var state: UInt64

    /// Seeds the generator.
    public init(seed: UInt64) {
        state = seed
    }

    /// The next 64 random bits.
    public mutating func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        var mixed = state
        mixed = (mixed ^ (mixed >> 30)) &* 0xbf58_476d_1ce4_e5b9
        mixed = (mixed ^ (mixed >> 27)) &* 0x94d0_49bb_1331_11eb
        return mixed ^ (mixed >> 31)
    }

    /// A value in `0..<bound`; the modulo bias is irrelevant for load generation.
    public mutating func below(_ bound: Int) -> Int {
        Int(next() % UInt64(bound))
    }

    /// True with probability `percent`/100.
    public mutating func chance(_ percent: Int) -> Bool {
        below(100) < percent
    }
}

/// The kinds of metric in the generated mix, with their share of the names.
public enum MetricKind: Int, Sendable, CaseIterable {
    /// `api.requests.host-12.status_200:1|c` (40 %).
    case counter
    /// `db.query.users.p3.latency:12.5|ms|@0.1` (25 %).
    case timer
    /// `queue.depth.q7:42|g`, sometimes a signed delta (15 %).
    case gauge
    /// `users.unique.page-9:u4711|s` (10 %).
    case set
    /// `http.req.route-5:1|c|#env:prod,svc:web` (5 %).
    case taggedCounter
    /// `http.latency.route-6:3.2|ms|@0.5|#env:prod,svc:api,region:eu-west-1` (5 %).
    case taggedTimer

    /// Picks a kind with the documented weights.
    static func pick(_ random: inout SplitMix64) -> MetricKind {
        switch random.below(100) {
        case 0..<40: .counter
        case 40..<65: .timer
        case 65..<80: .gauge
        case 80..<90: .set
        case 90..<95: .taggedCounter
        default: .taggedTimer
        }
    }
}

/// A fixed catalogue of distinct metric names, each with a kind and, for tagged kinds, a tag list.
///
/// Name `i` embeds `i`, so the names are distinct; the kinds and tags come from the seed.
public struct MetricCatalog: Sendable {
    /// The name bytes of each metric.
    public let names: [[UInt8]]
    /// The kind of each metric.
    public let kinds: [MetricKind]
    /// The `|#...` suffix of each tagged metric; empty for the others.
    public let tags: [[UInt8]]

    /// Builds `count` metrics from `seed`.
    ///
    /// - Parameter compact: shorter names of the same shapes (`api.req.host12.s200`), so that a
    ///   1400-byte datagram holds about 45 lines, as issue 3's W2 describes; the default mix
    ///   averages 38 bytes a line and packs about 36.
    public init(count: Int, seed: UInt64, compact: Bool = false) {
        precondition(count > 0)
        var random = SplitMix64(seed: seed)
        let codes = ["200", "201", "304", "404", "500"]
        let tables = ["users", "orders", "items", "sessions", "events", "carts", "payments", "audit"]
        let environments = ["prod", "staging"]
        let services = ["web", "api", "worker", "billing"]
        let regions = ["eu-west-1", "us-east-1", "ap-south-1"]
        var names: [[UInt8]] = []
        var kinds: [MetricKind] = []
        var tags: [[UInt8]] = []
        names.reserveCapacity(count)
        for index in 0..<count {
            let kind = MetricKind.pick(&random)
            let name: String
            var tag = ""
            switch (kind, compact) {
            case (.counter, false):
                name = "api.requests.host-\(index / 5).status_\(codes[index % 5])"
            case (.counter, true):
                name = "api.req.host\(index / 5).s\(codes[index % 5])"
            case (.timer, false):
                name = "db.query.\(tables[index % 8]).p\(index / 8).latency"
            case (.timer, true):
                name = "db.query.\(tables[index % 8]).p\(index / 8).ms"
            case (.gauge, _):
                // Already short.
                name = "queue.depth.q\(index)"
            case (.set, _):
                name = compact ? "users.uniq.p\(index)" : "users.unique.page-\(index)"
            case (.taggedCounter, _), (.taggedTimer, _):
                name = compact
                    ? (kind == .taggedCounter ? "http.req.r\(index)" : "http.lat.r\(index)")
                    : (kind == .taggedCounter ? "http.req.route-\(index)" : "http.latency.route-\(index)")
                tag = "|#env:\(environments[random.below(2)]),svc:\(services[random.below(4)])"
                if random.chance(50) {
                    tag += ",region:\(regions[random.below(3)])"
                }
            }
            names.append(Array(name.utf8))
            kinds.append(kind)
            tags.append(Array(tag.utf8))
        }
        self.names = names
        self.kinds = kinds
        self.tags = tags
    }

    /// The number of metrics.
    public var count: Int { names.count }

    /// Appends one line for a random metric, without its newline, using `random` for the choice and the value.
    public func appendLine(to out: inout [UInt8], random: inout SplitMix64) {
        let index = random.below(count)
        out.append(contentsOf: names[index])
        out.append(UInt8(ascii: ":"))
        switch kinds[index] {
        case .counter:
            appendDecimal(random.chance(80) ? 1 : 1 + random.below(100), to: &out)
            out.append(contentsOf: "|c".utf8)
            if random.chance(10) {
                out.append(contentsOf: "|@0.5".utf8)
            }
        case .timer:
            appendTiming(&out, &random)
            if random.chance(70) {
                out.append(contentsOf: ["|@0.1", "|@0.25", "|@0.5"][random.below(3)].utf8)
            }
        case .gauge:
            if random.chance(10) {
                out.append(random.chance(50) ? UInt8(ascii: "+") : UInt8(ascii: "-"))
                appendDecimal(random.below(10), to: &out)
            } else {
                appendDecimal(random.below(10_000), to: &out)
            }
            out.append(contentsOf: "|g".utf8)
        case .set:
            out.append(UInt8(ascii: "u"))
            appendDecimal(random.below(100_000), to: &out)
            out.append(contentsOf: "|s".utf8)
        case .taggedCounter:
            out.append(contentsOf: "1|c".utf8)
        case .taggedTimer:
            appendTiming(&out, &random)
            out.append(contentsOf: "|@0.5".utf8)
        }
        out.append(contentsOf: tags[index])
    }

    /// Appends a timing such as `12.5|ms`.
    private func appendTiming(_ out: inout [UInt8], _ random: inout SplitMix64) {
        appendDecimal(random.below(1000), to: &out)
        out.append(UInt8(ascii: "."))
        appendDecimal(random.below(10), to: &out)
        out.append(contentsOf: "|ms".utf8)
    }
}

/// Appends the decimal digits of a non-negative `value`.
public func appendDecimal(_ value: Int, to out: inout [UInt8]) {
    precondition(value >= 0)
    if value >= 10 {
        appendDecimal(value / 10, to: &out)
    }
    out.append(UInt8(ascii: "0") + UInt8(value % 10))
}

/// How lines are grouped into datagrams.
public enum PackingMode: String, Sendable, CaseIterable {
    /// One line per datagram.
    case line
    /// As many lines as fit in the datagram size.
    case packed
}

/// A pool of prebuilt datagrams laid out back to back, with prefix sums so that a sender can account for any
/// run of datagrams without touching their bytes.
public struct DatagramPool: Sendable {
    /// All datagrams, concatenated.
    public let bytes: [UInt8]
    /// `offsets[i]..<offsets[i + 1]` are the bytes of datagram `i`; `count + 1` entries.
    public let offsets: [Int]
    /// `linePrefix[i]` is the number of lines in datagrams `0..<i`.
    public let linePrefix: [Int]
    /// `checksumPrefix[i]` is the wrapping sum of line hashes in datagrams `0..<i`.
    public let checksumPrefix: [UInt64]

    /// Builds `count` datagrams from `catalog`: in `.line` mode one line each, in `.packed` mode lines appended
    /// while the datagram stays within `size` bytes. Every line ends with a newline.
    public init(catalog: MetricCatalog, mode: PackingMode, count: Int, size: Int, seed: UInt64) {
        precondition(count > 0 && size > 0)
        var random = SplitMix64(seed: seed ^ 0x5eed_da7a_9a3e_0001)
        var bytes: [UInt8] = []
        var offsets = [0]
        var linePrefix = [0]
        var checksumPrefix: [UInt64] = [0]
        var line: [UInt8] = []
        var pending: [UInt8]?
        var datagramLines = 0
        var datagramChecksum: UInt64 = 0
        while offsets.count <= count {
            if let carried = pending {
                line = carried
                pending = nil
            } else {
                line.removeAll(keepingCapacity: true)
                catalog.appendLine(to: &line, random: &random)
                line.append(UInt8(ascii: "\n"))
            }
            let used = bytes.count - offsets[offsets.count - 1]
            if datagramLines > 0 && (mode == .line || used + line.count > size) {
                offsets.append(bytes.count)
                linePrefix.append(linePrefix[linePrefix.count - 1] + datagramLines)
                checksumPrefix.append(checksumPrefix[checksumPrefix.count - 1] &+ datagramChecksum)
                datagramLines = 0
                datagramChecksum = 0
                pending = line
                continue
            }
            bytes.append(contentsOf: line)
            datagramLines += 1
            datagramChecksum &+= line.withUnsafeBytes { StatsDLine.hash(UnsafeRawBufferPointer(rebasing: $0.dropLast())) }
        }
        self.bytes = bytes
        self.offsets = offsets
        self.linePrefix = linePrefix
        self.checksumPrefix = checksumPrefix
    }

    /// Number of datagrams in the pool.
    public var count: Int { offsets.count - 1 }

    /// Lines, bytes and checksum of sending the first `datagrams` datagrams of an endless cycle over the pool.
    public func totals(forDatagrams datagrams: Int) -> (lines: Int, bytes: Int, checksum: UInt64) {
        let cycles = datagrams / count
        let rest = datagrams % count
        let lines = cycles * linePrefix[count] + linePrefix[rest]
        let bytes = cycles * offsets[count] + offsets[rest]
        let checksum = UInt64(truncatingIfNeeded: cycles) &* checksumPrefix[count] &+ checksumPrefix[rest]
        return (lines, bytes, checksum)
    }
}
