import RelayKernel

/// The three line forms of DogStatsD, told apart by their first bytes, and where each keeps its
/// routing key and its optional fields.
///
/// ```
/// page.views:1:2:3|d|@0.5|#env:prod,svc:web|c:83c0a99c|T1656581400     a metric
/// ^^^^^^^^^^ ^^^^^ ^ ^^^^ ^^^^^^^^^^^^^^^^^ ^^^^^^^^^^ ^^^^^^^^^^^
/// name (key) values type rate tags           container  timestamp
///
/// _sc|db.ping|2|d:1656581400|h:db1|#env:prod|m:timed out                a service check
///     ^^^^^^^ ^ fields…; the format puts `m:` last (the agent ends it at the next `|`)
///     name (key), status
///
/// _e{5,4}:title|text|d:1656581400|h:web1|k:agg|p:low|s:src|t:warning|#env:prod   an event
///    ^ ^    ^^^^^ ^^^^ fields…
///    title and text lengths (`eventHeader`); title (key), text (may hold `|`)
/// ```
/// A line that starts `_sc|` is a service check, `_e{` an event; anything else is a metric
/// (`_sc:1|c` is a metric named `_sc`, as a statsd daemon reads it; the Datadog agent reads
/// every line starting `_sc` as a service check and drops that one, as `--validate strict`
/// does: `LineValidator`).
public enum DogStatsD {
    /// What a line is.
    public enum Form: Sendable, Equatable {
        case metric
        case serviceCheck
        case event
    }

    /// The form of the non-empty line `line` of `bytes`, from its first four bytes.
    @inline(__always)
    public static func form(of bytes: Span<UInt8>, _ line: Range<Int>) -> Form {
        let start = line.lowerBound
        guard bytes[start] == UInt8(ascii: "_"), line.count >= 3 else { return .metric }
        if bytes[start &+ 1] == UInt8(ascii: "e") && bytes[start &+ 2] == UInt8(ascii: "{") { return .event }
        if line.count >= 4 && bytes[start &+ 1] == UInt8(ascii: "s") && bytes[start &+ 2] == UInt8(ascii: "c")
            && bytes[start &+ 3] == UInt8(ascii: "|") {
            return .serviceCheck
        }
        return .metric
    }

    /// The scan of a service check or an event (`nil` for a metric, which `LineScanner` keys
    /// by its first `:`).
    ///
    /// - Precondition: `line` is non-empty and within `datagram`.
    @inline(__always)
    static func scan(_ datagram: RawSpan, _ line: Range<Int>) -> LineScanner.Line? {
        let bytes = Span<UInt8>(_bytes: datagram)
        switch form(of: bytes, line) {
        case .metric:
            return nil
        case .serviceCheck:
            let nameStart = line.lowerBound &+ 4
            let nameEnd = datagram.firstOffset(of: UInt8(ascii: "|"), in: nameStart..<line.upperBound) ?? line.upperBound
            if nameEnd == nameStart { return .malformed(.emptyName) }
            return .valid(start: line.lowerBound, end: line.upperBound, key: nameStart..<nameEnd)
        case .event:
            guard let header = eventHeader(datagram, line) else { return .malformed(.badEventHeader) }
            if header.title.isEmpty { return .malformed(.emptyName) }
            return .valid(start: line.lowerBound, end: line.upperBound, key: header.title)
        }
    }

    /// Where an event's title and text lie, as its `{title,text}` header says.
    public struct EventHeader: Sendable, Equatable {
        /// The title's bytes (the routing key).
        public var title: Range<Int>
        /// The text's bytes; the optional fields start one byte after its end, if any remain.
        public var text: Range<Int>
    }

    /// A length beyond any line (65 507 bytes): a header number past it cannot fit, whatever
    /// its digits, and sums of two stay far from overflow.
    static let lengthCap = 1 << 20

    /// Reads the `_e{T,X}:` header of the event `line` as the Datadog agent does, and checks
    /// it against the line:
    /// ```
    /// _e{5,4}:title|text|#env:prod
    /// ^^^^^^^ the header: the bytes before the first `:`, at least 7; `T` and `X` lie between
    ///         `_e{` and its last byte (not checked to be `}`), split at its first `,`
    ///         ^^^^^ the title: `T` bytes
    ///              ^ one byte, not checked (`|` when the header counts bytes)
    ///               ^^^^ the text: `X` bytes; the fields start one byte after it
    /// ```
    /// `T` and `X` are read as Go's `strconv.Atoi` reads them (an optional sign, decimal
    /// digits); a negative one is refused, and `T + 1 + X` must not exceed the bytes after the
    /// `:`. Nothing else is checked: the agent takes the bytes the lengths point at, whatever
    /// they are, so a header that counts characters rather than bytes (`_e{11,4}:héllo
    /// wörld|text`, 13 bytes of title) passes, with the title and text cut where the byte
    /// counts fall (`héllo wör`, `d|te`). `T` = 0 gives an empty title (the scanner's
    /// `emptyName`). Every index is compared with the line's end before it is read: a header
    /// that lies (`_e{500,4}:short|x`) is `nil`, never a read past the line.
    ///
    /// - Precondition: `line` starts with `_e{`.
    public static func eventHeader(_ datagram: RawSpan, _ line: Range<Int>) -> EventHeader? {
        let bytes = Span<UInt8>(_bytes: datagram)
        let end = line.upperBound
        guard let colon = datagram.firstOffset(of: UInt8(ascii: ":"), in: line.lowerBound &+ 3..<end),
              colon &- line.lowerBound >= 7
        else { return nil }
        let lengths = line.lowerBound &+ 3..<colon &- 1
        guard let comma = datagram.firstOffset(of: UInt8(ascii: ","), in: lengths),
              let titleLength = length(bytes, lengths.lowerBound..<comma),
              let textLength = length(bytes, comma &+ 1..<lengths.upperBound)
        else { return nil }
        let titleStart = colon &+ 1
        guard titleLength &+ 1 &+ textLength <= end &- titleStart else { return nil }
        let textStart = titleStart &+ titleLength &+ 1
        return EventHeader(title: titleStart..<titleStart &+ titleLength, text: textStart..<textStart &+ textLength)
    }

    /// A header length as Go's `strconv.Atoi` reads `range` (`[+-]` then one or more digits,
    /// any number of leading zeros), `nil` when it is not a number or is negative; a number
    /// past `lengthCap` is `lengthCap`.
    @inline(__always)
    static func length(_ bytes: Span<UInt8>, _ range: Range<Int>) -> Int? {
        var index = range.lowerBound
        var negative = false
        if index < range.upperBound && (bytes[index] == UInt8(ascii: "+") || bytes[index] == UInt8(ascii: "-")) {
            negative = bytes[index] == UInt8(ascii: "-")
            index &+= 1
        }
        guard index < range.upperBound else { return nil }
        var value = 0
        while index < range.upperBound {
            let digit = bytes[index] &- UInt8(ascii: "0")
            guard digit < 10 else { return nil }
            value = min(value &* 10 &+ Int(digit), lengthCap)
            index &+= 1
        }
        return negative && value != 0 ? nil : value
    }

    /// Where the optional fields of a valid line begin, as the Datadog agent splits them: the
    /// offset of the first field's first byte (the line's end for one empty field), or `nil`
    /// when the line has none. A metric's fields follow its type, a service check's its
    /// status, an event's the byte after its text.
    ///
    /// - Parameter key: the line's key, as `LineScanner` found it.
    @inline(__always)
    public static func fieldsStart(_ datagram: RawSpan, line: Range<Int>, key: Range<Int>) -> Int? {
        let end = line.upperBound
        switch form(of: Span<UInt8>(_bytes: datagram), line) {
        case .metric:
            // The values end at the first `|`, the type at the next.
            guard let typeBar = datagram.firstOffset(of: UInt8(ascii: "|"), in: key.upperBound..<end),
                  let fieldsBar = datagram.firstOffset(of: UInt8(ascii: "|"), in: typeBar &+ 1..<end)
            else { return nil }
            return fieldsBar &+ 1
        case .serviceCheck:
            // `key.upperBound` is the `|` before the status, or the end.
            guard key.upperBound < end,
                  let fieldsBar = datagram.firstOffset(of: UInt8(ascii: "|"), in: key.upperBound &+ 1..<end)
            else { return nil }
            return fieldsBar &+ 1
        case .event:
            guard let text = eventHeader(datagram, line)?.text, text.upperBound < end else { return nil }
            return text.upperBound &+ 1
        }
    }

    /// The bytes after `#` of the line's last tags field (`|#env:prod,svc:web`), or `nil`: the
    /// Datadog agent reads every field and keeps the last tags field it meets, so a second one
    /// replaces the first. Every field counts, a service check's after its `m:` message too
    /// (the agent splits the message at `|` as it does any field).
    public static func tags(_ datagram: RawSpan, line: Range<Int>, key: Range<Int>) -> Range<Int>? {
        guard var start = fieldsStart(datagram, line: line, key: key) else { return nil }
        let bytes = Span<UInt8>(_bytes: datagram)
        let end = line.upperBound
        var last: Range<Int>?
        while true {
            let fieldEnd = datagram.firstOffset(of: UInt8(ascii: "|"), in: start..<end) ?? end
            if start < fieldEnd && bytes[start] == UInt8(ascii: "#") { last = start &+ 1..<fieldEnd }
            if fieldEnd == end { return last }
            start = fieldEnd &+ 1
        }
    }

    /// Where `--metrics-tags` go in a valid line: right after the bytes of its last tags field
    /// (`existing`, the bytes after `#`: the one the Datadog agent keeps), wherever that field
    /// sits among the others; with no tags field, at the line's end, or for a service check
    /// before its first `|m:` message field, which the DogStatsD format puts last.
    /// ```
    /// a:1|c|#env:prod|T1656581400      offset after "prod"; existing "env:prod"
    /// a:1|c|#a|#b                      offset at the end; existing "b"
    /// a:1|c|T1656581400                offset at the end; existing nil
    /// _sc|db|2|h:db1|m:down|x          offset at "|m:"; existing nil
    /// ```
    ///
    /// - Parameter key: the line's key, as `LineScanner` found it.
    public static func tagInsertion(_ datagram: RawSpan, line: Range<Int>, key: Range<Int>) -> (offset: Int, existing: Range<Int>?) {
        let end = line.upperBound
        guard var start = fieldsStart(datagram, line: line, key: key) else { return (end, nil) }
        let bytes = Span<UInt8>(_bytes: datagram)
        let isServiceCheck = key.lowerBound != line.lowerBound && form(of: bytes, line) == .serviceCheck
        var last: Range<Int>?
        var message: Int?
        while true {
            let fieldEnd = datagram.firstOffset(of: UInt8(ascii: "|"), in: start..<end) ?? end
            if start < fieldEnd {
                let first = bytes[start]
                if first == UInt8(ascii: "#") {
                    last = start &+ 1..<fieldEnd
                } else if isServiceCheck && message == nil && first == UInt8(ascii: "m") && fieldEnd &- start >= 2
                    && bytes[start &+ 1] == UInt8(ascii: ":") {
                    message = start &- 1
                }
            }
            if fieldEnd == end { break }
            start = fieldEnd &+ 1
        }
        if let last { return (last.upperBound, last) }
        return (message ?? end, nil)
    }
}
