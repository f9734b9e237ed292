/// An upper bound on how deeply a YAML text nests collections, read off the text before the
/// parser sees it. Yams composes nested collections by recursion, so a few thousand levels
/// (`[[[[…]]]]`, `- - - … x`, 3 KB of `{`) overflow the stack and end the process: the relay
/// at start, `check-config`, or a running relay at a reload. A configuration is a few levels
/// deep; a text whose bound passes `limit` is refused before it is parsed.
///
/// The bound never under-counts, and needs no parsing: every `[` and `{` in the text, quoted or
/// not, counts as a flow level (a flow collection cannot be deeper than the brackets that open
/// it), and the block levels a line can open are at most twice its indentation in columns and
/// the `- `, `? ` and `: ` indicators that start it one after another (a block sequence may sit
/// at its parent key's indentation, so a column or an indicator can carry two levels). It
/// over-counts a file with many brackets (each IPv6 backend's `[`): `limit` leaves room for
/// hundreds, and stays far below the depth that overflows the 8 MiB stack the configuration is
/// parsed on (the main thread; about 5 000 levels of `[` in a release build).
enum YAMLNestingBound {
    /// The largest bound a configuration file may have.
    static let limit = 1_000

    /// The bound for `text`, and the line (from 1) where it passes `limit`, if it does.
    static func measure(_ text: String) -> (bound: Int, line: Int?) {
        var brackets = 0
        var deepestLine = 0
        var passedAt: Int?
        var line = 1
        var columns = 0
        var indicators = 0
        var atLineStart = true
        var previous: UInt8 = 0
        var pendingIndicator = false
        func check() {
            let bound = brackets + 2 * (columns + indicators) + 2
            deepestLine = max(deepestLine, 2 * (columns + indicators) + 2)
            if passedAt == nil && bound > limit { passedAt = line }
        }
        for byte in text.utf8 {
            if byte == UInt8(ascii: "\n") || (byte == UInt8(ascii: "\r")) {
                if pendingIndicator { indicators += 1 }
                check()
                // CR LF is one line break.
                if !(byte == UInt8(ascii: "\n") && previous == UInt8(ascii: "\r")) { line += 1 }
                (columns, indicators, atLineStart, pendingIndicator) = (0, 0, true, false)
                previous = byte
                continue
            }
            if atLineStart {
                if pendingIndicator {
                    pendingIndicator = false
                    if byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t") {
                        indicators += 1
                        previous = byte
                        continue
                    }
                    atLineStart = false
                } else if byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t") {
                    if indicators == 0 { columns += 1 }
                    previous = byte
                    continue
                } else if byte == UInt8(ascii: "-") || byte == UInt8(ascii: "?") || byte == UInt8(ascii: ":") {
                    pendingIndicator = true
                    previous = byte
                    continue
                } else {
                    atLineStart = false
                }
            }
            if byte == UInt8(ascii: "[") || byte == UInt8(ascii: "{") {
                brackets += 1
                check()
            }
            previous = byte
        }
        if pendingIndicator { indicators += 1 }
        check()
        return (brackets + deepestLine, passedAt)
    }
}
