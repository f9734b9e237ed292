import RelayKernel

/// Splits a datagram into StatsD lines in place and checks each one, without copying.
///
/// A datagram holds lines, each ended by `\n` or `\r\n`; the last may lack one, or end in a
/// lone `\r`. Any other `\r` is a byte of its line, as statsd daemons and the Datadog agent read
/// it (they split at `\n` only and drop one `\r` before it): an event's text or a service
/// check's message may hold one (clients escape only `\n`), and splitting there would forward
/// the rest of the text as a metric. `a:1|c\rb:2|c` is one line, as the daemon behind would
/// read it had it been sent there directly. A line is forwarded only if it has a
/// non-empty name before its first `:`, no NUL byte (statsd daemons stop reading a datagram
/// at a NUL, so one such line would destroy a whole outgoing batch) and at most 65 507 bytes
/// (the most a UDP datagram to an IPv4 backend can carry):
/// ```
/// api.requests:1|c|@0.1|#env:prod\r\n
/// ^^^^^^^^^^^^ ^                   ^^
/// name (key)   first ':'           "\r\n" (or "\n") ends the line; not forwarded
/// ```
/// Nothing after the name is interpreted here: values, types, sample rates and tags pass
/// through byte for byte (`--validate strict` checks them afterwards, `LineValidator`). Empty
/// lines (and so a lone `\r\n`) are skipped.
///
/// Two DogStatsD forms have no metric name before a `:` and are keyed otherwise (`DogStatsD`):
/// a service check `_sc|name|status|…` by its name, an event `_e{5,4}:title|text|…` by its
/// title, whose length the `{title,text}` header gives (a header that does not fit the line
/// is `badEventHeader`, in every mode; the fit is the Datadog agent's, `DogStatsD.eventHeader`).
///
/// The common line has no `\r` and no NUL: one scan per line (`RawSpan.lineStop`) finds its
/// `\n` and its first `:` together, and only a line that stops at a `\r` or a NUL is looked
/// at again, byte class by byte class (each line once: its `\n` first, so a datagram of many
/// `\r` costs what one of many `\n` does).
public enum LineScanner {
    /// Why a line was not forwarded.
    public enum Malformation: Int, CaseIterable, Sendable {
        /// The line has no `:`.
        case missingColon
        /// The line starts with `:`.
        case emptyName
        /// The line contains a NUL byte.
        case nulByte
        /// The line is longer than any UDP datagram to a backend can be
        /// (`BatchAssembler.largestDatagramBytes`, 65 507 bytes): only a client sending over IPv6
        /// can send one. Counted here so that it never becomes a send that fails.
        case tooLong
        /// An event (`_e{`) whose `{title,text}` length header is not two numbers that fit the
        /// line (`DogStatsD.eventHeader`, the Datadog agent's rule). Checked in every
        /// `--validate` mode: such an event has no title to be routed by.
        case badEventHeader
        /// A line that `--metrics-prefix`/`--metrics-tags` would make longer than any UDP
        /// datagram to a backend can be (65 507 bytes, `BatchAssembler.largestDatagramBytes`):
        /// dropped whole, never cut (`LineRewrite`).
        case tooLongRewritten
        // The reasons below are `--validate strict`'s only (`LineValidator`): lines the Datadog
        // agent's parser refuses, by the field it refuses them for.
        /// A metric name holding `|` (strict).
        case badName
        /// Values that are empty, not numbers Go's `ParseFloat` takes, or none finite, for a
        /// `c`, `g`, `ms`, `h` or `d` (strict).
        case badValue
        /// No type, or a type other than `c`, `g`, `ms`, `h`, `s`, `d` (strict).
        case badType
        /// A sample rate `|@R` that is not a number Go's `ParseFloat` takes (strict).
        case badSampleRate
        /// A timestamp `|T…` that is not an integer of at least 1 (strict).
        case badTimestamp
        /// A line starting `_sc` without a name and a status of 0, 1, 2 or 3 (strict).
        case badServiceCheck
    }

    /// One step of the scan.
    public enum Line: Equatable, Sendable {
        /// A line to forward: bytes `start..<end` (no `\n`, no `\r` at its end); `key` is what routes it:
        /// a metric's name (`start..<` its first `:`), a service check's name, an event's title.
        case valid(start: Int, end: Int, key: Range<Int>)
        /// An empty line; skipped.
        case empty
        /// A line that is dropped, and why.
        case malformed(Malformation)
    }

    /// Scans the line that starts at `offset` and moves `offset` past its line ending.
    ///
    /// - Parameters:
    ///   - datagram: the received bytes.
    ///   - offset: where the line starts; on return, where the next one starts.
    ///   - mayContainNul: `false` when the caller has checked the whole datagram holds no NUL
    ///     (only a line that stops at a `\r` or NUL reads it: the common line needs no check).
    ///   - mayContainCarriageReturn: `false` when the caller has checked the whole datagram
    ///     holds no `\r` (then no line's last byte is looked at for one).
    /// - Returns: the line, or `nil` once `offset` reaches the end of the datagram.
    @inline(__always)
    public static func next(
        in datagram: RawSpan, from offset: inout Int, mayContainNul: Bool = true, mayContainCarriageReturn: Bool = true
    ) -> Line? {
        var nameHash: UInt64?
        return next(
            in: datagram, from: &offset, hashingNameWith: nil, nameHash: &nameHash, mayContainNul: mayContainNul,
            mayContainCarriageReturn: mayContainCarriageReturn)
    }

    /// `next` that also hashes a metric's name with `seeds` where the scan can, from the blocks
    /// it reads (`RawSpan.lineStop(from:hashingNameWith:)`): `nameHash` is the `.valid` line's
    /// `key.nameHash(seeds:)`, or `nil` when the caller must compute it (the scan could not, or
    /// the key is not the bytes before the first `:`: a service check's or an event's).
    @inline(__always)
    public static func next(
        in datagram: RawSpan, from offset: inout Int, hashingNameWith seeds: NameHashSeeds?, nameHash: inout UInt64?,
        mayContainNul: Bool = true, mayContainCarriageReturn: Bool = true
    ) -> Line? {
        let count = datagram.byteCount
        let start = offset
        guard start < count else { return nil }
        // The common line ends at a `\n` (or the datagram's end) with no `\r` or NUL before it:
        // one scan finds that end and the first `:`. A line that stops at a `\r` or a NUL takes
        // the general path below.
        let (stop, endsAtNewline, firstColon, scannedHash) = datagram.lineStop(from: start, hashingNameWith: seeds)
        nameHash = nil
        if endsAtNewline {
            offset = stop < count ? stop &+ 1 : count
            if stop == start { return .empty }
            if stop &- start > BatchAssembler.largestDatagramBytes { return .malformed(.tooLong) }
            // `start < count`, checked above: no bounds check again.
            if Span<UInt8>(_bytes: datagram)[unchecked: start] == UInt8(ascii: "_"), let line = dogStatsD(datagram, start..<stop) {
                return line
            }
            guard let colon = firstColon else { return .malformed(.missingColon) }
            if colon == start { return .malformed(.emptyName) }
            nameHash = scannedHash
            // The scan's colon lies after `start` (checked just above) and before `stop`.
            return .valid(start: start, end: stop, key: Range(uncheckedBounds: (start, colon)))
        }
        return general(
            in: datagram, from: &offset, mayContainNul: mayContainNul, mayContainCarriageReturn: mayContainCarriageReturn)
    }

    /// `next` for a line that stops at a `\r` or a NUL: its `\n` looked for first, then a `\r`
    /// just before it, then a NUL.
    /// Out of line, as `dogStatsD`: the line loop that inlines `next` stays small (its
    /// optimiser then inlines what the common line needs).
    @inline(never)
    static func general(
        in datagram: RawSpan, from offset: inout Int, mayContainNul: Bool, mayContainCarriageReturn: Bool
    ) -> Line? {
        let count = datagram.byteCount
        let start = offset
        let newline = datagram.firstOffset(of: UInt8(ascii: "\n"), in: start..<count) ?? count
        offset = newline < count ? newline + 1 : count
        var end = newline
        // One "\r" before the "\n" (or the datagram's end) belongs to the line ending.
        if mayContainCarriageReturn, end > start, Span<UInt8>(_bytes: datagram)[end &- 1] == UInt8(ascii: "\r") {
            end &-= 1
        }
        if end == start { return .empty }
        if end - start > BatchAssembler.largestDatagramBytes { return .malformed(.tooLong) }
        if mayContainNul && datagram.firstOffset(of: 0, in: start..<end) != nil { return .malformed(.nulByte) }
        // One load and compare per line; only lines starting with `_` look further.
        if Span<UInt8>(_bytes: datagram)[start] == UInt8(ascii: "_"), let line = dogStatsD(datagram, start..<end) {
            return line
        }
        guard let colon = datagram.firstOffset(of: UInt8(ascii: ":"), in: start..<end) else {
            return .malformed(.missingColon)
        }
        if colon == start { return .malformed(.emptyName) }
        return .valid(start: start, end: end, key: start..<colon)
    }

    /// A line starting with `_`: a service check or an event (`DogStatsD.scan`), or `nil` for a
    /// metric whose name starts with `_`. Out of line: few lines take it.
    @inline(never)
    static func dogStatsD(_ datagram: RawSpan, _ line: Range<Int>) -> Line? {
        DogStatsD.scan(datagram, line)
    }
}
