import RelayKernel

/// A `--validate` mode as a type, so that `DatagramProcessor`'s line loop is compiled once per
/// mode with the check inlined (or, under `loose`, gone), instead of testing the mode per line.
protocol LineValidation {
    /// Why a valid line fails this mode's checks, or `nil`.
    static func check(_ datagram: RawSpan, line: Range<Int>, key: Range<Int>) -> LineScanner.Malformation?
}

/// `--validate loose`: nothing beyond the scanner.
enum LooseValidation: LineValidation {
    @inline(__always)
    static func check(_ datagram: RawSpan, line: Range<Int>, key: Range<Int>) -> LineScanner.Malformation? { nil }
}

/// `--validate strict`: `LineValidator`.
enum StrictValidation: LineValidation {
    @inline(__always)
    static func check(_ datagram: RawSpan, line: Range<Int>, key: Range<Int>) -> LineScanner.Malformation? {
        LineValidator.check(datagram, line: line, key: key)
    }
}

/// A `--hash-key` mode as a type (see `LineValidation`).
protocol KeyPolicy {
    /// Whether the key holds the line's tags (what `RoutingKey.write` writes out).
    static var includesTags: Bool { get }
    /// The FNV-1a 64 of the line's routing key, continuing from `seed` (the offset basis, or
    /// the state after a `--metrics-prefix`), and whether that key is other than the bytes of
    /// `key` (then a ring's md5 needs it written out: `RoutingKey.write`).
    static func hash(
        _ datagram: RawSpan, line: Range<Int>, key: Range<Int>, seed: UInt64, scratch: inout RoutingKey
    ) -> (UInt64, Bool)
}

/// `--hash-key name`.
enum NameKey: KeyPolicy {
    static var includesTags: Bool { false }

    @inline(__always)
    static func hash(
        _ datagram: RawSpan, line: Range<Int>, key: Range<Int>, seed: UInt64, scratch: inout RoutingKey
    ) -> (UInt64, Bool) {
        (RoutingKey.hash(continuing: seed, datagram.extracting(key)), false)
    }
}

/// `--hash-key name+tags`.
enum NameAndTagsKey: KeyPolicy {
    static var includesTags: Bool { true }

    @inline(__always)
    static func hash(
        _ datagram: RawSpan, line: Range<Int>, key: Range<Int>, seed: UInt64, scratch: inout RoutingKey
    ) -> (UInt64, Bool) {
        if let hash = scratch.hash(datagram, line: line, key: key, seed: seed) { return (hash, true) }
        return (RoutingKey.hash(continuing: seed, datagram.extracting(key)), false)
    }
}

/// Whether lines are rewritten (`--metrics-prefix`, `--metrics-tags`), as a type (see
/// `LineValidation`): without a rewrite the loop has no rewriting code at all.
protocol RewritePolicy {
    static var isActive: Bool { get }
}

/// No `--metrics-prefix` and no `--metrics-tags`: lines pass byte for byte.
enum NoRewrite: RewritePolicy {
    static var isActive: Bool { false }
}

/// A `--metrics-prefix` or `--metrics-tags` (`LineRewriter`).
enum Rewriting: RewritePolicy {
    static var isActive: Bool { true }
}
