import RelayKernel

/// `--validate strict`: the syntax of a line `LineScanner` found valid, checked field by field
/// without copying (`DogStatsD` draws the three forms). The first fault found is the reason.
///
/// A metric: `name:V[:V…]|TYPE` then optional fields in any order, each at most once:
/// - the name holds no `|` (`badName`);
/// - `TYPE` is `c`, `g`, `ms`, `h`, `s` or `d` (`badType`; a line with no `|` has none);
/// - each value is non-empty; for every type but `s` a decimal number, optionally signed (the
///   sign of a `g` makes it a delta), with an optional fraction and exponent: `1`, `-2.5`,
///   `+3`, `.5`, `1e3` (`badValue`); a set's members may be any bytes;
/// - `@R`: a plain decimal in (0, 1] (`badSampleRate`);
/// - `#t1,t2`: one or more tags, none empty (`badTags`);
/// - `TN`: a Unix time, digits (`badTimestamp`);
/// - the origin fields every form may carry (DogStatsD 1.2, 1.5 and 1.6, which the Datadog
///   clients add on their own: datadog-go sends `c:` by default): `c:ID` a container id,
///   `e:DATA` external data, `card:LEVEL` a tag cardinality, each non-empty (`badField`);
/// - anything else, an empty field or a field given twice is `badField`.
///
/// A service check: `_sc|name|STATUS` with `STATUS` one of `0`-`3` (`badServiceCheck`), then
/// `d:` digits (`badServiceCheck`), `h:HOST`, `#tags`, the origin fields, and `m:MESSAGE` last
/// (the rest of the line, any bytes).
///
/// An event: its header already checked by the scanner, then `d:` digits, `h:HOST`, `k:KEY`,
/// `p:normal|low`, `s:SOURCE`, `t:error|warning|info|success` (`badEvent` for a bad `d:`, `p:`
/// or `t:`), `#tags`, the origin fields.
public enum LineValidator {
    /// Why the valid line `line` of `datagram`, keyed by `key`, fails strict validation, or
    /// `nil` when it passes.
    ///
    /// - Precondition: `LineScanner` scanned `line` as `.valid(start:end:key:)` with this key.
    public static func check(_ datagram: RawSpan, line: Range<Int>, key: Range<Int>) -> LineScanner.Malformation? {
        let bytes = Span<UInt8>(_bytes: datagram)
        switch DogStatsD.form(of: bytes, line) {
        case .metric: return checkMetric(datagram, bytes, line: line, key: key)
        case .serviceCheck: return checkServiceCheck(datagram, bytes, line: line, key: key)
        case .event: return checkEvent(datagram, bytes, line: line, key: key)
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
        let typeEnd = datagram.firstOffset(of: UInt8(ascii: "|"), in: typeBar &+ 1..<end) ?? end
        let type = typeBar &+ 1..<typeEnd
        let isSet: Bool
        switch Word(bytes, type) {
        case Word.c, Word.g, Word.ms, Word.h, Word.d: isSet = false
        case Word.s: isSet = true
        default: return .badType
        }
        var valueStart = key.upperBound &+ 1
        while true {
            let valueEnd = datagram.firstOffset(of: UInt8(ascii: ":"), in: valueStart..<typeBar) ?? typeBar
            if valueEnd == valueStart { return .badValue }
            if !isSet && !isNumber(bytes, valueStart..<valueEnd) { return .badValue }
            if valueEnd == typeBar { break }
            valueStart = valueEnd &+ 1
        }
        var seen = Seen()
        var fieldStart = typeEnd
        while fieldStart < end {
            let start = fieldStart &+ 1
            let fieldEnd = datagram.firstOffset(of: UInt8(ascii: "|"), in: start..<end) ?? end
            fieldStart = fieldEnd
            guard start < fieldEnd else { return .badField }
            let field = start..<fieldEnd
            switch bytes[start] {
            case UInt8(ascii: "@"):
                guard seen.first(.rate) else { return .badField }
                if !isSampleRate(bytes, start &+ 1..<fieldEnd) { return .badSampleRate }
            case UInt8(ascii: "#"):
                guard seen.first(.tags) else { return .badField }
                if !areTags(datagram, start &+ 1..<fieldEnd) { return .badTags }
            case UInt8(ascii: "T"):
                guard seen.first(.timestamp) else { return .badField }
                if !isDigits(bytes, start &+ 1..<fieldEnd) { return .badTimestamp }
            default:
                guard let origin = originField(bytes, field), seen.first(origin.field), !origin.value.isEmpty else {
                    return .badField
                }
            }
        }
        return nil
    }

    /// The origin field `field` is (`c:`, `e:` or `card:`) and its value, or `nil` for any
    /// other field: what every form may carry beside its own.
    @inline(__always)
    static func originField(_ bytes: Span<UInt8>, _ field: Range<Int>) -> (field: Seen.Field, value: Range<Int>)? {
        let start = field.lowerBound
        if hasPrefix(bytes, field, UInt8(ascii: "c")) { return (.container, start &+ 2..<field.upperBound) }
        if hasPrefix(bytes, field, UInt8(ascii: "e")) { return (.externalData, start &+ 2..<field.upperBound) }
        if field.count >= 5, Word(bytes, start..<start &+ 5) == Word.cardinality {
            return (.cardinality, start &+ 5..<field.upperBound)
        }
        return nil
    }

    private static func checkServiceCheck(
        _ datagram: RawSpan, _ bytes: Span<UInt8>, line: Range<Int>, key: Range<Int>
    ) -> LineScanner.Malformation? {
        let end = line.upperBound
        // `key.upperBound` is the '|' before the status (or the end: no status).
        guard key.upperBound < end else { return .badServiceCheck }
        let statusEnd = datagram.firstOffset(of: UInt8(ascii: "|"), in: key.upperBound &+ 1..<end) ?? end
        let status = key.upperBound &+ 1..<statusEnd
        guard status.count == 1, bytes[status.lowerBound] &- UInt8(ascii: "0") < 4 else { return .badServiceCheck }
        return checkFields(datagram, bytes, from: statusEnd, end: end, ServiceCheckFields.self)
    }

    private static func checkEvent(
        _ datagram: RawSpan, _ bytes: Span<UInt8>, line: Range<Int>, key: Range<Int>
    ) -> LineScanner.Malformation? {
        guard let header = DogStatsD.eventHeader(datagram, line) else { return .badEventHeader }
        return checkFields(datagram, bytes, from: header.text.upperBound, end: line.upperBound, EventFields.self)
    }

    /// The optional fields of a service check or an event, `|#tags` or `|X:value`, from `from`
    /// (the `|` before the first) to `end`: each known to the form at most once, with its
    /// value checked as the form's table says (`FieldTable`).
    @inline(__always)
    private static func checkFields<Table: FieldTable>(
        _ datagram: RawSpan, _ bytes: Span<UInt8>, from: Int, end: Int, _: Table.Type
    ) -> LineScanner.Malformation? {
        var seen = Seen()
        var fieldStart = from
        while fieldStart < end {
            let start = fieldStart &+ 1
            let fieldEnd = datagram.firstOffset(of: UInt8(ascii: "|"), in: start..<end) ?? end
            fieldStart = fieldEnd
            guard start < fieldEnd else { return .badField }
            if bytes[start] == UInt8(ascii: "#") {
                guard seen.first(.tags) else { return .badField }
                if !areTags(datagram, start &+ 1..<fieldEnd) { return .badTags }
                continue
            }
            if let origin = originField(bytes, start..<fieldEnd) {
                guard seen.first(origin.field), !origin.value.isEmpty else { return .badField }
                continue
            }
            guard fieldEnd &- start >= 2, bytes[start &+ 1] == UInt8(ascii: ":"),
                  let rule = Table.rule(for: bytes[start]) else { return .badField }
            let value = start &+ 2..<fieldEnd
            guard seen.first(rule.field) else { return .badField }
            switch rule.value {
            case .nonEmpty:
                if value.isEmpty { return .badField }
            case .digits:
                if !isDigits(bytes, value) { return Table.fault }
            case .priority:
                let word = Word(bytes, value)
                if word != Word.normal && word != Word.low { return Table.fault }
            case .alert:
                let word = Word(bytes, value)
                if word != Word.error && word != Word.warning && word != Word.info && word != Word.success { return Table.fault }
            case .restOfLine:
                // The message is last and takes the rest of the line, `|` and all.
                return nil
            }
        }
        return nil
    }

    /// What one `X:value` field of a service check or an event is, and how its value is checked.
    struct FieldRule {
        /// What it is, to refuse it given twice.
        let field: Seen.Field
        let value: ValueRule
    }

    /// How a field's value is checked (a fault is `badField` for `nonEmpty`, the form's own
    /// reason otherwise).
    enum ValueRule {
        case nonEmpty, digits, priority, alert
        /// The rest of the line, whatever it holds (a service check's `m:`).
        case restOfLine
    }

    // MARK: - Pieces
    // MARK: - Pieces

    /// Whether `range` is a decimal number: `[+-]?(D+(.D*)?|.D+)([eE][+-]?D+)?`.
    static func isNumber(_ bytes: Span<UInt8>, _ range: Range<Int>) -> Bool {
        var index = range.lowerBound
        let end = range.upperBound
        if index < end && (bytes[index] == UInt8(ascii: "+") || bytes[index] == UInt8(ascii: "-")) { index &+= 1 }
        let integerStart = index
        while index < end && bytes[index] &- UInt8(ascii: "0") < 10 { index &+= 1 }
        var digits = index &- integerStart
        if index < end && bytes[index] == UInt8(ascii: ".") {
            index &+= 1
            let fractionStart = index
            while index < end && bytes[index] &- UInt8(ascii: "0") < 10 { index &+= 1 }
            digits &+= index &- fractionStart
        }
        guard digits > 0 else { return false }
        if index < end && (bytes[index] == UInt8(ascii: "e") || bytes[index] == UInt8(ascii: "E")) {
            index &+= 1
            if index < end && (bytes[index] == UInt8(ascii: "+") || bytes[index] == UInt8(ascii: "-")) { index &+= 1 }
            let exponentStart = index
            while index < end && bytes[index] &- UInt8(ascii: "0") < 10 { index &+= 1 }
            guard index > exponentStart else { return false }
        }
        return index == end
    }

    /// Whether `range` is a plain decimal `D+(.D*)?` or `.D+` in (0, 1], decided on the digits
    /// (no floating point): `1`, `1.000`, `0.5`, `.25`; not `0`, `1.01`, `2`, `1e-1`.
    static func isSampleRate(_ bytes: Span<UInt8>, _ range: Range<Int>) -> Bool {
        var index = range.lowerBound
        let end = range.upperBound
        var integer = 0
        var integerDigits = 0
        while index < end && bytes[index] &- UInt8(ascii: "0") < 10 {
            // Any non-zero integer digit but a single leading 1 is too large: stop counting.
            integer = min(integer &* 10 &+ Int(bytes[index] &- UInt8(ascii: "0")), 10)
            integerDigits &+= 1
            index &+= 1
        }
        var fractionDigits = 0
        var fractionNonZero = false
        if index < end && bytes[index] == UInt8(ascii: ".") {
            index &+= 1
            while index < end && bytes[index] &- UInt8(ascii: "0") < 10 {
                fractionNonZero = fractionNonZero || bytes[index] != UInt8(ascii: "0")
                fractionDigits &+= 1
                index &+= 1
            }
        }
        guard index == end, integerDigits &+ fractionDigits > 0 else { return false }
        if integer == 1 { return !fractionNonZero }
        return integer == 0 && fractionNonZero
    }

    /// Whether `range` is one or more tags separated by `,`, none empty.
    static func areTags(_ datagram: RawSpan, _ range: Range<Int>) -> Bool {
        var start = range.lowerBound
        while true {
            let comma = datagram.firstOffset(of: UInt8(ascii: ","), in: start..<range.upperBound) ?? range.upperBound
            if comma == start { return false }
            if comma == range.upperBound { return true }
            start = comma &+ 1
        }
    }

    /// Whether `range` is one or more ASCII digits.
    static func isDigits(_ bytes: Span<UInt8>, _ range: Range<Int>) -> Bool {
        guard !range.isEmpty else { return false }
        for index in range where bytes[index] &- UInt8(ascii: "0") >= 10 { return false }
        return true
    }

    /// Whether `range` starts with `first` then `:`.
    @inline(__always)
    static func hasPrefix(_ bytes: Span<UInt8>, _ range: Range<Int>, _ first: UInt8) -> Bool {
        range.count >= 2 && bytes[range.lowerBound] == first && bytes[range.lowerBound &+ 1] == UInt8(ascii: ":")
    }

    /// The optional fields a line has had so far, to refuse one given twice.
    struct Seen {
        enum Field: UInt16 {
            case rate = 1, tags = 2, timestamp = 4, container = 8, host = 16, priority = 32, alert = 64
            case aggregation = 128, source = 256, message = 512, externalData = 1024, cardinality = 2048
        }

        private var bits: UInt16 = 0

        /// Notes `field`; `false` if it was seen before.
        @inline(__always)
        mutating func first(_ field: Field) -> Bool {
            defer { bits |= field.rawValue }
            return bits & field.rawValue == 0
        }
    }
}

/// The `X:value` fields one DogStatsD form allows, by their letter (`LineValidator.checkFields`).
protocol FieldTable {
    /// The rule of the field whose letter is `letter`, or `nil` for one the form does not have.
    static func rule(for letter: UInt8) -> LineValidator.FieldRule?
    /// The reason for a bad value of a field checked beyond `nonEmpty`.
    static var fault: LineScanner.Malformation { get }
}

/// A service check's fields: `d:` digits, `h:` host, `m:` message (last, the rest of the line).
enum ServiceCheckFields: FieldTable {
    static var fault: LineScanner.Malformation { .badServiceCheck }

    @inline(__always)
    static func rule(for letter: UInt8) -> LineValidator.FieldRule? {
        switch letter {
        case UInt8(ascii: "d"): LineValidator.FieldRule(field: .timestamp, value: .digits)
        case UInt8(ascii: "h"): LineValidator.FieldRule(field: .host, value: .nonEmpty)
        case UInt8(ascii: "m"): LineValidator.FieldRule(field: .message, value: .restOfLine)
        default: nil
        }
    }
}

/// An event's fields: `d:` digits, `h:` host, `k:` aggregation key, `p:` priority, `s:` source,
/// `t:` alert type.
enum EventFields: FieldTable {
    static var fault: LineScanner.Malformation { .badEvent }

    @inline(__always)
    static func rule(for letter: UInt8) -> LineValidator.FieldRule? {
        switch letter {
        case UInt8(ascii: "d"): LineValidator.FieldRule(field: .timestamp, value: .digits)
        case UInt8(ascii: "h"): LineValidator.FieldRule(field: .host, value: .nonEmpty)
        case UInt8(ascii: "k"): LineValidator.FieldRule(field: .aggregation, value: .nonEmpty)
        case UInt8(ascii: "p"): LineValidator.FieldRule(field: .priority, value: .priority)
        case UInt8(ascii: "s"): LineValidator.FieldRule(field: .source, value: .nonEmpty)
        case UInt8(ascii: "t"): LineValidator.FieldRule(field: .alert, value: .alert)
        default: nil
        }
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
    static let normal = Word("normal"), low = Word("low"), cardinality = Word("card:")
    static let error = Word("error"), warning = Word("warning"), info = Word("info"), success = Word("success")
}
