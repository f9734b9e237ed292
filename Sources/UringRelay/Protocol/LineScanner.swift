import RelayKernel

/// Splits a datagram into StatsD lines in place and checks each one, without copying.
///
/// A datagram holds lines, each ended by `\n`, `\r\n` or a lone `\r` (the old Mac line ending);
/// the last may lack one. `a:1|c\rb:2|c` is two lines, as it is to a statsd daemon that splits
/// on either byte, and neither metric swallows the other. A line is forwarded only if it has a
/// non-empty name before its first `:`, no NUL byte (statsd daemons stop reading a datagram
/// at a NUL, so one such line would destroy a whole outgoing batch) and at most 65 507 bytes
/// (the most a UDP datagram to an IPv4 backend can carry):
/// ```
/// api.requests:1|c|@0.1|#env:prod\r\n
/// ^^^^^^^^^^^^ ^                   ^^
/// name (key)   first ':'           "\r\n" (or "\n", or "\r") ends the line; not forwarded
/// ```
/// Nothing after the name is interpreted: values, types, sample rates and tags pass through
/// byte for byte. Empty lines (and so a `\r` right after a line ending, as in `\r\r\n`) are
/// skipped.
///
/// The common datagram has no `\r` at all: the caller checks that once per datagram (one
/// `memchr`, like the NUL check) and passes `mayContainCarriageReturn: false`, so each line
/// costs only its search for `\n`.
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
    }

    /// One step of the scan.
    public enum Line: Equatable, Sendable {
        /// A line to forward: bytes `start..<end` (no `\r`, no `\n`), name `start..<nameEnd`.
        case valid(start: Int, end: Int, nameEnd: Int)
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
    ///     (one `memchr` per datagram instead of one per line).
    ///   - mayContainCarriageReturn: `false` when the caller has checked the whole datagram
    ///     holds no `\r`; then only `\n` is looked for.
    /// - Returns: the line, or `nil` once `offset` reaches the end of the datagram.
    @inline(__always)
    public static func next(
        in datagram: RawSpan, from offset: inout Int, mayContainNul: Bool = true, mayContainCarriageReturn: Bool = true
    ) -> Line? {
        let count = datagram.byteCount
        let start = offset
        guard start < count else { return nil }
        let newline = datagram.firstOffset(of: UInt8(ascii: "\n"), in: start..<count) ?? count
        offset = newline < count ? newline + 1 : count
        var end = newline
        if mayContainCarriageReturn, let carriageReturn = datagram.firstOffset(of: UInt8(ascii: "\r"), in: start..<newline) {
            end = carriageReturn
            // "\r\n" is one ending; a lone "\r" is an ending by itself, and the next line
            // starts right after it.
            if carriageReturn + 1 < newline { offset = carriageReturn + 1 }
        }
        if end == start { return .empty }
        if end - start > BatchAssembler.largestDatagramBytes { return .malformed(.tooLong) }
        if mayContainNul && datagram.firstOffset(of: 0, in: start..<end) != nil { return .malformed(.nulByte) }
        guard let colon = datagram.firstOffset(of: UInt8(ascii: ":"), in: start..<end) else {
            return .malformed(.missingColon)
        }
        if colon == start { return .malformed(.emptyName) }
        return .valid(start: start, end: end, nameEnd: colon)
    }
}
