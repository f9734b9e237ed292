import UringRelay

/// The line rules of `LineScanner`, written a second time as plainly as possible (one byte at
/// a time, no search, no flags), so that the fuzz targets can compare the two.
///
/// A line ends at `\n` or at `\r\n`; the last line may have no ending, or end in a lone `\r`;
/// any other `\r` is a byte of its line; an ending with nothing before it is an empty line;
/// nothing follows the last ending. A non-empty
/// line is, checked in this order: too long (more than `BatchAssembler.largestDatagramBytes`
/// bytes), holding a NUL, then by its form: a line starting `_sc|` is a service check keyed by
/// the bytes up to the next `|` (none: `emptyName`); one starting `_e{` an event keyed by its
/// title, whose `{T,X}` header must be two numbers of 1-6 digits with `T` title bytes, `|`, `X`
/// text bytes then the end or `|` (else `badEventHeader`; `T` = 0 is `emptyName`); any other
/// is without a `:`, starting with `:`, or else valid, its key the bytes before the first `:`.
public enum ReferenceSplitter {
    /// Every line of `datagram` in order, in `LineScanner`'s terms.
    public static func lines(_ datagram: [UInt8]) -> [LineScanner.Line] {
        var lines: [LineScanner.Line] = []
        var start = 0
        var index = 0
        while index < datagram.count {
            if datagram[index] == UInt8(ascii: "\n") {
                lines.append(classify(datagram, withoutCarriageReturn(datagram, start..<index)))
                index += 1
                start = index
            } else {
                index += 1
            }
        }
        if start < datagram.count { lines.append(classify(datagram, withoutCarriageReturn(datagram, start..<datagram.count))) }
        return lines
    }

    /// `range` without its last byte when that is a `\r` (part of the line ending).
    static func withoutCarriageReturn(_ datagram: [UInt8], _ range: Range<Int>) -> Range<Int> {
        if let last = range.last, datagram[last] == UInt8(ascii: "\r") { return range.lowerBound..<last }
        return range
    }

    /// What one line (without its ending) is.
    static func classify(_ datagram: [UInt8], _ range: Range<Int>) -> LineScanner.Line {
        if range.isEmpty { return .empty }
        if range.count > BatchAssembler.largestDatagramBytes { return .malformed(.tooLong) }
        if datagram[range].contains(0) { return .malformed(.nulByte) }
        let line = Array(datagram[range])
        let base = range.lowerBound
        if line.starts(with: Array("_sc|".utf8)) {
            let name = line[4...].prefix { $0 != UInt8(ascii: "|") }
            if name.isEmpty { return .malformed(.emptyName) }
            return .valid(start: range.lowerBound, end: range.upperBound, key: base + 4..<base + 4 + name.count)
        }
        if line.starts(with: Array("_e{".utf8)) {
            guard let title = eventTitle(line) else { return .malformed(.badEventHeader) }
            if title.isEmpty { return .malformed(.emptyName) }
            return .valid(start: range.lowerBound, end: range.upperBound, key: base + title.lowerBound..<base + title.upperBound)
        }
        guard let colon = datagram[range].firstIndex(of: UInt8(ascii: ":")) else { return .malformed(.missingColon) }
        if colon == range.lowerBound { return .malformed(.emptyName) }
        return .valid(start: range.lowerBound, end: range.upperBound, key: range.lowerBound..<colon)
    }

    /// The title's offsets within the event `line`, or `nil` when its header does not hold.
    static func eventTitle(_ line: [UInt8]) -> Range<Int>? {
        // The header is what precedes the first `:`; the lengths lie between `_e{` and its last
        // byte, split at the first `,`, each read as Go's `strconv.Atoi` reads a number (Swift's
        // `Int(_:)` reads the same: an optional sign, then digits).
        guard let colon = line.firstIndex(of: UInt8(ascii: ":")), colon >= 7 else { return nil }
        let lengths = Array(line[3..<colon - 1])
        guard let comma = lengths.firstIndex(of: UInt8(ascii: ",")),
              let titleLength = Int(String(decoding: lengths[..<comma], as: UTF8.self)),
              let textLength = Int(String(decoding: lengths[(comma + 1)...], as: UTF8.self)),
              titleLength >= 0, textLength >= 0
        else { return nil }
        let rest = line.count - (colon + 1)
        guard titleLength <= rest, textLength <= rest - titleLength - 1 else { return nil }
        return colon + 1..<colon + 1 + titleLength
    }
}
