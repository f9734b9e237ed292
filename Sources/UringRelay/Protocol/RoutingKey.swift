import BasicContainers
import RelayKernel

/// What routes a line (`--hash-key`).
public enum HashKeyMode: String, CaseIterable, Sendable {
    /// The name alone (a service check's name, an event's title): the Go StatsRelay's key.
    case name
    /// The name and its tags, sorted (`RoutingKey`), so that every series of a name may go to
    /// a different backend while tag order never splits one.
    case nameAndTags = "name+tags"
}

/// How lines are checked before they are routed (`--validate`).
public enum ValidationMode: String, CaseIterable, Sendable {
    /// Anything with a name passes (the Go StatsRelay's behaviour); only the scanner's
    /// malformations are dropped.
    case loose
    /// `LineValidator`'s syntax as well: a line that fails it is dropped and counted by reason.
    case strict
}

/// The `name+tags` routing key of a line, written out or hashed without allocating.
///
/// The key of a line with no tag is its name, byte for byte what `--hash-key name` uses, so
/// untagged series route the same under both. Otherwise it is
/// ```
/// name|#tag1,tag2,…      the distinct non-empty tags in ascending byte order
/// ```
/// whatever their order in the line, and however often a tag repeats: `#a,a,b` keys as `#a,b`,
/// one series to the Datadog agent (its context key ignores a repeated tag), and datadog-go
/// sends a tag twice when a call repeats a global one. Under `jump` the line goes where the key's FNV-1a 64
/// sends it (computed as the bytes stream past, never written out); on the `etsy` and
/// `ketama` rings the key is written into a scratch buffer (`write`) for its md5.
///
/// Sorting uses a fixed table of `maxSortedTags` tag bounds, made once per worker. A line with
/// more tags than that (the Datadog agent's own limit is far above what clients send; 64 is
/// more than any real line seen) is keyed instead by
/// ```
/// name|#~HHHHHHHHHHHHHHHH  16 lowercase hex digits: the sum mod 2⁶⁴ of each tag's FNV-1a 64
/// ```
/// Addition is commutative, so the key is still independent of tag order, and stable across
/// relays. A sum rather than an XOR because XOR cancels pairs: `#a,a,b` would route like
/// `#b`. Past `maxSortedTags` a repeated tag counts each time (finding repeats among
/// thousands of tags would take a sort the per-line path cannot pay for): only such lines
/// with repeats split a series.
public struct RoutingKey: ~Copyable {
    /// The most tags sorted in place; a line with more is keyed by the sum of its tags' hashes.
    public static let maxSortedTags = 64

    /// Tag bounds, `start << 32 | end`, of the line being keyed (capacity `maxSortedTags`).
    private var tags: RigidArray<UInt64>
    /// The key `write` wrote last, for a ring's md5 (read as `written.span.bytes`).
    private(set) var written: RigidArray<UInt8>

    /// Scratch room for lines of up to `maxLineBytes` bytes.
    public init(maxLineBytes: Int) {
        tags = RigidArray(capacity: Self.maxSortedTags)
        // The key is at most the line itself, or the name and 19 bytes (`|#~` and 16 digits).
        written = RigidArray(capacity: maxLineBytes &+ 32)
    }

    /// What a line's tags are, once collected.
    enum Collected {
        /// No tag: the key is the name.
        case none
        /// The tags, sorted in `tags`.
        case sorted
        /// More than `maxSortedTags`: the sum of their FNV-1a 64 hashes.
        case summed(UInt64)
    }

    /// Finds the tags of `line` (a `.valid` line keyed by `key`) and sorts them.
    private mutating func collect(_ datagram: RawSpan, line: Range<Int>, key: Range<Int>) -> Collected {
        guard let field = DogStatsD.tags(datagram, line: line, key: key) else { return .none }
        tags.removeAll()
        var start = field.lowerBound
        var overflow = false
        var sum: UInt64 = 0
        while start <= field.upperBound {
            let comma = datagram.firstOffset(of: UInt8(ascii: ","), in: start..<field.upperBound) ?? field.upperBound
            if comma > start {
                if tags.isFull {
                    if !overflow {
                        // Switch to the sum: add the tags collected so far.
                        overflow = true
                        for index in 0..<tags.count { sum &+= FNV1a.hash64(datagram.extracting(Self.bounds(tags[index]))) }
                    }
                    sum &+= FNV1a.hash64(datagram.extracting(start..<comma))
                } else {
                    tags.append(UInt64(start) << 32 | UInt64(comma))
                }
            }
            start = comma &+ 1
        }
        if overflow { return .summed(sum) }
        if tags.isEmpty { return .none }
        sort(Span<UInt8>(_bytes: datagram))
        return .sorted
    }

    /// Insertion sort of `tags` by their bytes: the lists are short and often sorted already.
    private mutating func sort(_ bytes: Span<UInt8>) {
        var index = 1
        while index < tags.count {
            let moving = tags[index]
            var slot = index
            while slot > 0, Self.less(bytes, Self.bounds(moving), Self.bounds(tags[slot &- 1])) {
                tags[slot] = tags[slot &- 1]
                slot &-= 1
            }
            tags[slot] = moving
            index &+= 1
        }
    }

    /// Whether the bytes of `a` sort before those of `b` (unsigned bytes; a prefix first).
    @inline(__always)
    private static func less(_ bytes: Span<UInt8>, _ a: Range<Int>, _ b: Range<Int>) -> Bool {
        let common = min(a.count, b.count)
        var offset = 0
        while offset < common {
            let x = bytes[a.lowerBound &+ offset], y = bytes[b.lowerBound &+ offset]
            if x != y { return x < y }
            offset &+= 1
        }
        return a.count < b.count
    }

    /// Whether sorted tag `index` has the bytes of the one before it (a repeat, left out of
    /// the key).
    @inline(__always)
    private func repeatsPrevious(_ bytes: Span<UInt8>, _ index: Int) -> Bool {
        guard index > 0 else { return false }
        let previous = Self.bounds(tags[index &- 1]), current = Self.bounds(tags[index])
        return previous.count == current.count && !Self.less(bytes, previous, current)
    }

    @inline(__always)
    private static func bounds(_ packed: UInt64) -> Range<Int> {
        Int(truncatingIfNeeded: packed >> 32)..<Int(truncatingIfNeeded: packed & 0xffff_ffff)
    }

    /// The FNV-1a 64 of the key of `line`, computed as its bytes stream past; `nil` when the
    /// line has no tag (its key is its name: hash `key` as under `--hash-key name`).
    ///
    /// - Parameter seed: the hash state the name's bytes continue: the offset basis, or the
    ///   state after a `--metrics-prefix` (`LineRewriter.prefixSeed`).
    @inline(__always)
    public mutating func hash(_ datagram: RawSpan, line: Range<Int>, key: Range<Int>, seed: UInt64 = FNV1a.offsetBasis) -> UInt64? {
        let collected = collect(datagram, line: line, key: key)
        if case .none = collected { return nil }
        let bytes = Span<UInt8>(_bytes: datagram)
        var hash = Self.feed(seed, bytes, key)
        hash = Self.feed(hash, UInt8(ascii: "|"))
        hash = Self.feed(hash, UInt8(ascii: "#"))
        switch collected {
        case .none:
            break
        case .sorted:
            for index in 0..<tags.count where !repeatsPrevious(bytes, index) {
                if index > 0 { hash = Self.feed(hash, UInt8(ascii: ",")) }
                hash = Self.feed(hash, bytes, Self.bounds(tags[index]))
            }
        case .summed(let sum):
            hash = Self.feed(hash, UInt8(ascii: "~"))
            for shift in stride(from: 60, through: 0, by: -4) { hash = Self.feed(hash, Self.hexDigit(sum >> UInt64(shift))) }
        }
        return hash
    }

    /// Writes the key of `line` out, to be read from `written` (the name itself when the line
    /// has no tag).
    ///
    /// - Parameters:
    ///   - prefix: bytes written before the name (`P.` of `--metrics-prefix`), or empty.
    ///   - withTags: `false` for `--hash-key name`: the (prefixed) name alone.
    public mutating func write(
        _ datagram: RawSpan, line: Range<Int>, key: Range<Int>, prefix: RawSpan = RawSpan(), withTags: Bool = true
    ) {
        let collected = withTags ? collect(datagram, line: line, key: key) : .none
        let bytes = Span<UInt8>(_bytes: datagram)
        written.removeAll()
        written.append(copying: Span<UInt8>(_bytes: prefix))
        written.append(copying: bytes.extracting(key))
        if case .none = collected { return }
        written.append(UInt8(ascii: "|"))
        written.append(UInt8(ascii: "#"))
        switch collected {
        case .none:
            break
        case .sorted:
            for index in 0..<tags.count where !repeatsPrevious(bytes, index) {
                if index > 0 { written.append(UInt8(ascii: ",")) }
                written.append(copying: bytes.extracting(Self.bounds(tags[index])))
            }
        case .summed(let sum):
            written.append(UInt8(ascii: "~"))
            for shift in stride(from: 60, through: 0, by: -4) { written.append(Self.hexDigit(sum >> UInt64(shift))) }
        }
    }

    @inline(__always)
    private static func hexDigit(_ value: UInt64) -> UInt8 {
        let nibble = UInt8(truncatingIfNeeded: value & 0xf)
        return nibble < 10 ? UInt8(ascii: "0") &+ nibble : UInt8(ascii: "a") &+ nibble &- 10
    }

    /// The FNV-1a 64 of `bytes` continuing from `seed`: `FNV1a.hash64(bytes)` when `seed` is
    /// the offset basis (both are `RawSpan.fnv1a64`: eight bytes a turn, in C).
    @inline(__always)
    static func hash(continuing seed: UInt64, _ bytes: RawSpan) -> UInt64 {
        bytes.fnv1a64(continuing: seed)
    }

    @inline(__always)
    static func feed(_ hash: UInt64, _ byte: UInt8) -> UInt64 {
        (hash ^ UInt64(byte)) &* FNV1a.prime
    }

    @inline(__always)
    static func feed(_ hash: UInt64, _ bytes: Span<UInt8>, _ range: Range<Int>) -> UInt64 {
        var hash = hash
        for index in range { hash = (hash ^ UInt64(bytes[index])) &* FNV1a.prime }
        return hash
    }
}
