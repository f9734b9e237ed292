import RelayKernel

/// `--validate strict`: drops a line the Datadog agent would drop and forwards every line it
/// accepts, checked without copying (`DogStatsD` draws the three forms). The rules are the
/// agent's DogStatsD parser's (`comp/dogstatsd/server`, with its defaults: timestamps read,
/// origin detection off); the first fault in the agent's order is the reason.
///
/// A metric: `name:V[:V…]|TYPE` then optional fields split at `|`:
/// - the name holds no `|` (`badName`: the agent's name and value are the first field);
/// - a `|TYPE` follows, exactly `c`, `g`, `ms`, `h`, `s` or `d` (`badType`);
/// - the values are not empty; for every type but `s`, each value (multi-value packing splits
///   at `:`, skipping empty pieces: `21::22` is two) is a number Go's `strconv.ParseFloat`
///   takes (`1`, `-2.5`, `.5`, `1e3`, `0x1p-2`, `1_000`, `NaN`, `Inf`; not `1e400`, which
///   overflows), and at least one is finite: the agent parses `NaN` and `Inf` but its
///   aggregator discards such samples (`badValue`); a set's members may be any bytes;
/// - every `@R` field: `R` a number `ParseFloat` takes, whatever its value (`badSampleRate`);
/// - every `TN` field: `N` an integer `strconv.ParseInt` takes, at least 1 (`badTimestamp`);
/// - any other field, tags, an empty or repeated field included, is read or skipped by the
///   agent without error, and passes.
///
/// A line starting `_sc` is a service check to the agent: `_sc|name|STATUS` (the scanner's
/// form), or any other line with that start, read the same after its first four bytes. It
/// needs two `|` at least and `STATUS` exactly one of `0`-`3` (`badServiceCheck`); its fields
/// are never an error (the agent logs a bad `d:` and ignores it).
///
/// An event passes once the scanner has read its header (`DogStatsD.eventHeader`): the agent
/// ignores a bad field of an event too.
public enum LineValidator {
    /// Why the valid line `line` of `datagram`, keyed by `key`, fails strict validation, or
    /// `nil` when it passes.
    ///
    /// - Precondition: `LineScanner` scanned `line` as `.valid(start:end:key:)` with this key.
    public static func check(_ datagram: RawSpan, line: Range<Int>, key: Range<Int>) -> LineScanner.Malformation? {
        let bytes = Span<UInt8>(_bytes: datagram)
        switch DogStatsD.form(of: bytes, line) {
        case .metric:
            if isServiceCheckStart(bytes, line) { return checkServiceCheck(datagram, bytes, line: line) }
            return checkMetric(datagram, bytes, line: line, key: key)
        case .serviceCheck: return checkServiceCheck(datagram, bytes, line: line)
        case .event: return nil
        }
    }

    // MARK: - Forms

    private static func checkMetric(
        _ datagram: RawSpan, _ bytes: Span<UInt8>, line: Range<Int>, key: Range<Int>
    ) -> LineScanner.Malformation? {
        let end = line.upperBound
        if datagram.firstOffset(of: UInt8(ascii: "|"), in: key) != nil { return .badName }
        // key.upperBound is the first ':'; the values run to the first '|'.
        guard let typeBar = datagram.firstOffset(of: UInt8(ascii: "|"), in: key.upperBound..<end) else { return .badType }
        let values = key.upperBound &+ 1..<typeBar
        if values.isEmpty { return .badValue }
        let typeEnd = datagram.firstOffset(of: UInt8(ascii: "|"), in: typeBar &+ 1..<end) ?? end
        switch Word(bytes, typeBar &+ 1..<typeEnd) {
        case Word.c, Word.g, Word.ms, Word.h, Word.d:
            if !hasSample(datagram, bytes, values) { return .badValue }
        case Word.s:
            break
        default:
            return .badType
        }
        guard typeEnd < end else { return nil }
        var start = typeEnd &+ 1
        while true {
            let fieldEnd = datagram.firstOffset(of: UInt8(ascii: "|"), in: start..<end) ?? end
            if start < fieldEnd {
                switch bytes[start] {
                case UInt8(ascii: "@"):
                    if GoNumber.float(bytes, start &+ 1..<fieldEnd) == .invalid { return .badSampleRate }
                case UInt8(ascii: "T"):
                    if !GoNumber.isTimestamp(bytes, start &+ 1..<fieldEnd) { return .badTimestamp }
                default:
                    break
                }
            }
            if fieldEnd == end { return nil }
            start = fieldEnd &+ 1
        }
    }

    /// Whether the values `values` (`V[:V…]`, not empty) of a line that is not a set give the
    /// agent a sample: every piece between `:` that is not empty a number `ParseFloat` takes,
    /// one piece at least, and one of them finite.
    private static func hasSample(_ datagram: RawSpan, _ bytes: Span<UInt8>, _ values: Range<Int>) -> Bool {
        var finite = false
        var start = values.lowerBound
        while true {
            let pieceEnd = datagram.firstOffset(of: UInt8(ascii: ":"), in: start..<values.upperBound) ?? values.upperBound
            if start < pieceEnd {
                switch GoNumber.float(bytes, start..<pieceEnd) {
                case .invalid: return false
                case .finite: finite = true
                case .nonFinite: break
                }
            }
            if pieceEnd == values.upperBound { return finite }
            start = pieceEnd &+ 1
        }
    }

    /// Whether the line starts `_sc`, which makes it a service check to the agent.
    @inline(__always)
    private static func isServiceCheckStart(_ bytes: Span<UInt8>, _ line: Range<Int>) -> Bool {
        line.count >= 3 && bytes[line.lowerBound] == UInt8(ascii: "_") && bytes[line.lowerBound &+ 1] == UInt8(ascii: "s")
            && bytes[line.lowerBound &+ 2] == UInt8(ascii: "c")
    }

    /// A line starting `_sc` as the agent reads a service check: two `|` at least, then after
    /// the first four bytes a name that is not empty, a `|` and a status of `0`-`3` alone in
    /// its field.
    private static func checkServiceCheck(
        _ datagram: RawSpan, _ bytes: Span<UInt8>, line: Range<Int>
    ) -> LineScanner.Malformation? {
        let end = line.upperBound
        guard line.count >= 4 else { return .badServiceCheck }
        let nameStart = line.lowerBound &+ 4
        // The agent counts the `|` of the whole line, the fourth byte's too.
        guard let nameEnd = datagram.firstOffset(of: UInt8(ascii: "|"), in: nameStart..<end), nameEnd > nameStart,
              bytes[line.lowerBound &+ 3] == UInt8(ascii: "|")
                || datagram.firstOffset(of: UInt8(ascii: "|"), in: nameEnd &+ 1..<end) != nil
        else { return .badServiceCheck }
        let statusEnd = datagram.firstOffset(of: UInt8(ascii: "|"), in: nameEnd &+ 1..<end) ?? end
        guard statusEnd &- nameEnd == 2, bytes[nameEnd &+ 1] &- UInt8(ascii: "0") < 4 else { return .badServiceCheck }
        return nil
    }
}

/// Up to 8 bytes packed into one integer (little-endian, with the length in the top byte), so
/// that a short field compares against a keyword in one instruction, with no string.
struct Word: Equatable {
    let value: UInt64

    /// The packed bytes of `range` of `bytes`; a range longer than 7 bytes packs as `never`.
    @inline(__always)
    init(_ bytes: Span<UInt8>, _ range: Range<Int>) {
        guard range.count <= 7 else {
            value = .max
            return
        }
        var packed = UInt64(range.count) << 56
        var shift: UInt64 = 0
        for index in range {
            packed |= UInt64(bytes[index]) << shift
            shift &+= 8
        }
        value = packed
    }

    /// The packed bytes of an ASCII keyword of at most 7 bytes.
    init(_ keyword: StaticString) {
        precondition(keyword.utf8CodeUnitCount <= 7, "keywords are at most 7 bytes")
        var packed = UInt64(keyword.utf8CodeUnitCount) << 56
        var shift: UInt64 = 0
        for byte in "\(keyword)".utf8 {
            packed |= UInt64(byte) << shift
            shift &+= 8
        }
        value = packed
    }

    static let c = Word("c"), g = Word("g"), ms = Word("ms"), h = Word("h"), s = Word("s"), d = Word("d")
}
