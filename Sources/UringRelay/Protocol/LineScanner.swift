import RelayKernel

/// Splits a datagram into StatsD lines in place and checks each one, without copying.
///
/// A datagram holds lines separated by `\n`; the last may lack one. A line is forwarded only
/// if it has a non-empty name before its first `:` and no NUL byte (statsd daemons stop
/// reading a datagram at a NUL, so one such line would destroy a whole outgoing batch):
/// ```
/// api.requests:1|c|@0.1|#env:prod\r\n
/// ^^^^^^^^^^^^ ^                   ^^
/// name (key)   first ':'           "\r" dropped, "\n" ends the line
/// ```
/// Nothing after the name is interpreted: values, types, sample rates and tags pass through
/// byte for byte. Empty lines (and lines that are only `\r`) are skipped.
public enum LineScanner {
    /// Why a line was not forwarded.
    public enum Malformation: Int, CaseIterable, Sendable {
        /// The line has no `:`.
        case missingColon
        /// The line starts with `:`.
        case emptyName
        /// The line contains a NUL byte.
        case nulByte
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

    /// Scans the line that starts at `offset` and moves `offset` past its `\n`.
    ///
    /// - Parameters:
    ///   - datagram: the received bytes.
    ///   - offset: where the line starts; on return, where the next one starts.
    ///   - mayContainNul: `false` when the caller has checked the whole datagram holds no NUL
    ///     (one `memchr` per datagram instead of one per line).
    /// - Returns: the line, or `nil` once `offset` reaches the end of the datagram.
    @inline(__always)
    public static func next(in datagram: RawSpan, from offset: inout Int, mayContainNul: Bool = true) -> Line? {
        let count = datagram.byteCount
        let start = offset
        guard start < count else { return nil }
        let newline = datagram.firstOffset(of: UInt8(ascii: "\n"), in: start..<count) ?? count
        offset = newline < count ? newline + 1 : count
        var end = newline
        if end > start && datagram.unsafeLoad(fromByteOffset: end - 1, as: UInt8.self) == UInt8(ascii: "\r") { end -= 1 }
        if end == start { return .empty }
        if mayContainNul && datagram.firstOffset(of: 0, in: start..<end) != nil { return .malformed(.nulByte) }
        guard let colon = datagram.firstOffset(of: UInt8(ascii: ":"), in: start..<end) else {
            return .malformed(.missingColon)
        }
        if colon == start { return .malformed(.emptyName) }
        return .valid(start: start, end: end, nameEnd: colon)
    }
}
