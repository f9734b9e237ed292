import UringRelay

/// The line rules of `LineScanner`, written a second time as plainly as possible (one byte at
/// a time, no search, no flags), so that the fuzz targets can compare the two.
///
/// A line ends at `\n`, at `\r\n` or at a lone `\r`; the last line may have no ending; an
/// ending with nothing before it is an empty line; nothing follows the last ending. A non-empty
/// line is, checked in this order: too long (more than `BatchAssembler.largestDatagramBytes`
/// bytes), holding a NUL, without a `:`, starting with `:`, or else valid, its name the bytes
/// before the first `:`.
public enum ReferenceSplitter {
    /// Every line of `datagram` in order, in `LineScanner`'s terms.
    public static func lines(_ datagram: [UInt8]) -> [LineScanner.Line] {
        var lines: [LineScanner.Line] = []
        var start = 0
        var index = 0
        while index < datagram.count {
            let byte = datagram[index]
            if byte == UInt8(ascii: "\n") || byte == UInt8(ascii: "\r") {
                lines.append(classify(datagram, start..<index))
                if byte == UInt8(ascii: "\r") && index + 1 < datagram.count && datagram[index + 1] == UInt8(ascii: "\n") {
                    index += 1
                }
                index += 1
                start = index
            } else {
                index += 1
            }
        }
        if start < datagram.count { lines.append(classify(datagram, start..<datagram.count)) }
        return lines
    }

    /// What one line (without its ending) is.
    static func classify(_ datagram: [UInt8], _ range: Range<Int>) -> LineScanner.Line {
        if range.isEmpty { return .empty }
        if range.count > BatchAssembler.largestDatagramBytes { return .malformed(.tooLong) }
        if datagram[range].contains(0) { return .malformed(.nulByte) }
        guard let colon = datagram[range].firstIndex(of: UInt8(ascii: ":")) else { return .malformed(.missingColon) }
        if colon == range.lowerBound { return .malformed(.emptyName) }
        return .valid(start: range.lowerBound, end: range.upperBound, nameEnd: colon)
    }
}
