import BasicContainers
import RelayKernel

/// Frames one stream connection's bytes (TCP ingest) into complete StatsD lines for the core,
/// which treats the end of what it is handed as the end of a line: only whole lines go on, and
/// the partial line a read ends with waits here, joined with the next read's first bytes.
///
/// ```
///   read 1:  a:1|c\nb:2|c\nc:3         read 2:  |c\nd:4|c\n
///            ^^^^^^^^^^^^^^ ^^^                 ^^^ ^^^^^^^
///            delivered      kept (partial)      joined: "c:3|c\n" delivered, then "d:4|c\n"
/// ```
///
/// What `feed` delivers is always one or more complete lines, each ending with `\n` (a `\r\n`
/// ending is left for the core, which reads it). The bytes of a read that hold only whole lines
/// are lent on as they are, not copied; only a line split across reads is copied, into room
/// reserved once at the connection's accept (`maximumLineBytes`), so nothing is allocated per
/// read or per line. A line longer than `maximumLineBytes` (its `\n` not counted) is never
/// delivered: `feed` answers `.lineTooLong` and the connection is to be closed, as such a line
/// cannot be relayed whole in one datagram (`--max-datagram`).
///
/// Pure and I/O-free: fed by either driver, fuzzed by `FuzzStreamLineFramer`.
public struct StreamLineFramer: ~Copyable {
    /// The longest line accepted, without its `\n`.
    public let maximumLineBytes: Int
    /// The line begun by the last read and not yet ended (never holds a `\n`).
    private var partial: RigidArray<UInt8>
    /// The bytes the last `.lineTooLong` threw away: the partial line held, and the bytes of
    /// that `feed` from the over-long line's start (what followed it in the same read
    /// included), so the bytes fed add up to those delivered and those discarded.
    public private(set) var discardedByteCount = 0

    /// What a `feed` found.
    public enum Outcome: Equatable, Sendable {
        /// Every complete line was delivered; a partial one is kept.
        case framed
        /// A line longer than `maximumLineBytes`: nothing of it was delivered (the complete
        /// lines before it were); close the connection.
        case lineTooLong
    }

    /// A framer for one connection, its room for a partial line reserved now.
    ///
    /// - Precondition: `maximumLineBytes` ≥ 1.
    public init(maximumLineBytes: Int) {
        precondition(maximumLineBytes >= 1)
        self.maximumLineBytes = maximumLineBytes
        // The longest line and its `\n`, which a joined line is delivered with.
        partial = RigidArray(capacity: maximumLineBytes + 1)
    }

    /// How many bytes of a line begun and not ended are held.
    public var partialByteCount: Int { partial.count }

    /// Frames `bytes`, the next bytes of the stream, and hands each run of complete lines to
    /// `deliver` (in order: first the partial line it completes, then the whole lines that
    /// follow, lent straight from `bytes`), keeping what follows the last `\n`.
    ///
    /// - Returns: `.lineTooLong` when a line (held or in `bytes`) exceeds `maximumLineBytes`;
    ///   the framer is then left empty, and the stream is to be closed.
    public mutating func feed(_ bytes: RawSpan, deliver: (RawSpan) -> Void) -> Outcome {
        let outcome = frame(bytes, deliver: deliver)
        assert(verifyInvariants())
        return outcome
    }

    private mutating func frame(_ bytes: RawSpan, deliver: (RawSpan) -> Void) -> Outcome {
        let count = bytes.byteCount
        var start = 0
        if partial.count > 0 {
            guard let newline = bytes.firstOffset(of: UInt8(ascii: "\n"), in: 0..<count) else {
                return keep(bytes, from: 0)
            }
            guard partial.count + newline <= maximumLineBytes else { return tooLong(discarding: count) }
            partial.append(copying: Span<UInt8>(_bytes: bytes).extracting(0..<newline + 1))
            deliver(partial.span.bytes)
            partial.removeAll()
            start = newline + 1
        }
        guard let last = Self.lastNewline(in: bytes, from: start) else { return keep(bytes, from: start) }
        // A read no longer than a line (and its `\n`) cannot hold a whole line too long: only a
        // longer one (a peer's large segment) is scanned line by line.
        if last + 1 - start > maximumLineBytes + 1 {
            var lineStart = start
            while lineStart <= last {
                let newline = bytes.firstOffset(of: UInt8(ascii: "\n"), in: lineStart..<last + 1)!
                guard newline - lineStart <= maximumLineBytes else {
                    if lineStart > start { deliver(bytes.extracting(start..<lineStart)) }
                    return tooLong(discarding: count - lineStart)
                }
                lineStart = newline + 1
            }
        }
        deliver(bytes.extracting(start..<last + 1))
        return keep(bytes, from: last + 1)
    }

    /// The stream ended (the peer closed its side): the partial line it ended with, if any, is
    /// delivered as a last line without `\n` (a client's final line need not end with one).
    public mutating func finish(deliver: (RawSpan) -> Void) {
        guard partial.count > 0 else { return }
        deliver(partial.span.bytes)
        partial.removeAll()
    }

    /// Keeps `bytes[start...]` (no `\n` in it) as the partial line, if it fits.
    private mutating func keep(_ bytes: RawSpan, from start: Int) -> Outcome {
        let rest = bytes.byteCount - start
        guard rest > 0 else { return .framed }
        guard partial.count + rest <= maximumLineBytes else { return tooLong(discarding: rest) }
        partial.append(copying: Span<UInt8>(_bytes: bytes).extracting(start..<bytes.byteCount))
        return .framed
    }

    /// Drops the partial line held and `bytes` of the current feed (its undelivered end).
    private mutating func tooLong(discarding bytes: Int) -> Outcome {
        discardedByteCount = partial.count + bytes
        partial.removeAll()
        return .lineTooLong
    }

    /// The offset of the last `\n` of `bytes` at or after `start`: searched from the end, where
    /// it usually is (a read ends within its last line).
    private static func lastNewline(in bytes: RawSpan, from start: Int) -> Int? {
        let span = Span<UInt8>(_bytes: bytes)
        var index = bytes.byteCount - 1
        while index >= start {
            if span[index] == UInt8(ascii: "\n") { return index }
            index -= 1
        }
        return nil
    }

    /// Checks what every feed keeps: the partial line fits its room and holds no `\n`.
    public func verifyInvariants() -> Bool {
        guard partial.count <= maximumLineBytes else { return false }
        let span = partial.span
        for index in 0..<span.count where span[index] == UInt8(ascii: "\n") { return false }
        return true
    }
}
