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
///     ^^^^^^^ ^ fields…; `m:` is last and runs to the end of the line
///     name (key), status
///
/// _e{5,4}:title|text|d:1656581400|h:web1|k:agg|p:low|s:src|t:warning|#env:prod   an event
///    ^ ^    ^^^^^ ^^^^ fields…
///    title and text lengths in bytes; title (key), text (may hold `|`)
/// ```
/// A line that starts `_sc|` is a service check, `_e{` an event; anything else is a metric
/// (`_sc:1|c` is a metric named `_sc`). The Datadog agent tells them apart the same way.
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
            guard let header = eventHeader(bytes, line) else { return .malformed(.badEventHeader) }
            if header.title.isEmpty { return .malformed(.emptyName) }
            return .valid(start: line.lowerBound, end: line.upperBound, key: header.title)
        }
    }

    /// Where an event's title and text lie, as its `{title,text}` header says.
    public struct EventHeader: Sendable, Equatable {
        /// The title's bytes (the routing key).
        public var title: Range<Int>
        /// The text's bytes; the optional fields follow its end (`|…`), if any.
        public var text: Range<Int>
    }

    /// The most digits a length may have: a line is at most 65 507 bytes, so a longer number is
    /// a lie anyway, and the sums below cannot overflow.
    static let maxLengthDigits = 6

    /// Reads the `_e{T,X}:` header of the event `line` and checks it against the line: `T`
    /// bytes of title, then `|`, then `X` bytes of text that end the line or are followed by
    /// `|`. Every index is compared with the line's end before it is read, so a header that
    /// lies (`_e{500,4}:short|x`) is `nil`, never a read past the line.
    ///
    /// - Precondition: `line` starts with `_e{`.
    public static func eventHeader(_ bytes: Span<UInt8>, _ line: Range<Int>) -> EventHeader? {
        let end = line.upperBound
        guard let (titleLength, comma) = number(bytes, from: line.lowerBound &+ 3, end: end),
              comma < end, bytes[comma] == UInt8(ascii: ","),
              let (textLength, brace) = number(bytes, from: comma &+ 1, end: end),
              end &- brace >= 2, bytes[brace] == UInt8(ascii: "}"), bytes[brace &+ 1] == UInt8(ascii: ":")
        else { return nil }
        let titleStart = brace &+ 2
        // The title, then `|`: titleLength + 1 bytes must remain.
        guard titleLength < end &- titleStart, bytes[titleStart &+ titleLength] == UInt8(ascii: "|") else { return nil }
        let textStart = titleStart &+ titleLength &+ 1
        guard textLength <= end &- textStart else { return nil }
        let textEnd = textStart &+ textLength
        guard textEnd == end || bytes[textEnd] == UInt8(ascii: "|") else { return nil }
        return EventHeader(title: titleStart..<titleStart &+ titleLength, text: textStart..<textEnd)
    }

    /// A decimal number of 1 to `maxLengthDigits` digits at `from`, and the offset after it.
    @inline(__always)
    static func number(_ bytes: Span<UInt8>, from: Int, end: Int) -> (Int, Int)? {
        var value = 0
        var index = from
        while index < end, index &- from <= maxLengthDigits {
            let digit = bytes[index] &- UInt8(ascii: "0")
            guard digit < 10 else { break }
            value = value &* 10 &+ Int(digit)
            index &+= 1
        }
        let digits = index &- from
        return digits == 0 || digits > maxLengthDigits ? nil : (value, index)
    }

    /// Where the optional fields of a valid line begin: the offset of the `|` before the first
    /// of them (or the line's end). For a metric, the type comes first.
    ///
    /// - Parameter key: the line's key, as `LineScanner` found it.
    @inline(__always)
    public static func fieldsStart(_ bytes: Span<UInt8>, line: Range<Int>, key: Range<Int>) -> Int {
        switch form(of: bytes, line) {
        case .metric, .serviceCheck: return key.upperBound
        case .event: return eventHeader(bytes, line)?.text.upperBound ?? line.upperBound
        }
    }

    /// The bytes after `#` of the line's first tags field (`|#env:prod,svc:web`), or `nil`.
    /// A service check's message (`|m:…`, last) is not searched: it may hold anything.
    public static func tags(_ datagram: RawSpan, line: Range<Int>, key: Range<Int>) -> Range<Int>? {
        let bytes = Span<UInt8>(_bytes: datagram)
        let end = line.upperBound
        var bar = datagram.firstOffset(of: UInt8(ascii: "|"), in: fieldsStart(bytes, line: line, key: key)..<end)
        while let at = bar {
            let fieldStart = at &+ 1
            let fieldEnd = datagram.firstOffset(of: UInt8(ascii: "|"), in: fieldStart..<end) ?? end
            if fieldStart < end {
                let first = bytes[fieldStart]
                if first == UInt8(ascii: "#") { return fieldStart &+ 1..<fieldEnd }
                if first == UInt8(ascii: "m") && fieldEnd &- fieldStart >= 2 && bytes[fieldStart &+ 1] == UInt8(ascii: ":")
                    && key.lowerBound != line.lowerBound && form(of: bytes, line) == .serviceCheck {
                    return nil
                }
            }
            bar = fieldEnd < end ? fieldEnd : nil
        }
        return nil
    }

    /// Where `--metrics-tags` go in a valid line: right after the bytes of its first tags field
    /// (`existing`, the bytes after `#`), wherever that field sits among the others; with no
    /// tags field, at the line's end, or for a service check before its `|m:` message, which
    /// must stay last (it runs to the end of the line, `|` and all).
    /// ```
    /// a:1|c|#env:prod|T1656581400      offset after "prod"; existing "env:prod"
    /// a:1|c|T1656581400                offset at the end; existing nil
    /// _sc|db|2|h:db1|m:down|x          offset at "|m:"; existing nil
    /// ```
    ///
    /// - Parameter key: the line's key, as `LineScanner` found it.
    public static func tagInsertion(_ datagram: RawSpan, line: Range<Int>, key: Range<Int>) -> (offset: Int, existing: Range<Int>?) {
        let bytes = Span<UInt8>(_bytes: datagram)
        let end = line.upperBound
        let isServiceCheck = key.lowerBound != line.lowerBound && form(of: bytes, line) == .serviceCheck
        var bar = datagram.firstOffset(of: UInt8(ascii: "|"), in: fieldsStart(bytes, line: line, key: key)..<end)
        while let at = bar {
            let fieldStart = at &+ 1
            let fieldEnd = datagram.firstOffset(of: UInt8(ascii: "|"), in: fieldStart..<end) ?? end
            if fieldStart < end {
                let first = bytes[fieldStart]
                if first == UInt8(ascii: "#") { return (fieldEnd, fieldStart &+ 1..<fieldEnd) }
                if isServiceCheck && first == UInt8(ascii: "m") && fieldEnd &- fieldStart >= 2
                    && bytes[fieldStart &+ 1] == UInt8(ascii: ":") {
                    return (at, nil)
                }
            }
            bar = fieldEnd < end ? fieldEnd : nil
        }
        return (end, nil)
    }
}
