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
    /// The FNV-1a 64 of the line's routing key, and whether that key is other than the bytes
    /// of `key` (then a ring's md5 needs it written out: `RoutingKey.withKey`).
    static func hash(_ datagram: RawSpan, line: Range<Int>, key: Range<Int>, scratch: inout RoutingKey) -> (UInt64, Bool)
}

/// `--hash-key name`.
enum NameKey: KeyPolicy {
    @inline(__always)
    static func hash(_ datagram: RawSpan, line: Range<Int>, key: Range<Int>, scratch: inout RoutingKey) -> (UInt64, Bool) {
        (FNV1a.hash64(datagram.extracting(key)), false)
    }
}

/// `--hash-key name+tags`.
enum NameAndTagsKey: KeyPolicy {
    @inline(__always)
    static func hash(_ datagram: RawSpan, line: Range<Int>, key: Range<Int>, scratch: inout RoutingKey) -> (UInt64, Bool) {
        if let hash = scratch.hash(datagram, line: line, key: key) { return (hash, true) }
        return (FNV1a.hash64(datagram.extracting(key)), false)
    }
}
