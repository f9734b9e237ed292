import Glibc
import Logging

/// One log event as one JSON object on one line (`--log-format json`), for log pipelines that
/// parse JSON (Loki, Elasticsearch, journald's `MESSAGE` read by a shipper):
///
/// ```json
/// {"time":"2026-12-03T06:40:00.123Z","level":"info","label":"statsrelay","source":"UringRelay","message":"backend down","backend":"10.0.0.2:8125","reason":"refused"}
/// ```
///
/// `time` is UTC with milliseconds (RFC 3339), `level` swift-log's name. The metadata (the
/// handler's, its provider's, then the event's, later ones winning) follows as top-level keys
/// in key order; a key that would shadow one of the fixed keys is written `metadata.KEY`. A
/// string is a JSON string, an array or a dictionary a JSON array or object (a
/// `stringConvertible` value as its description). An error attached to the event is `error`.
///
/// Escaped per RFC 8259: `"` and `\`, control characters (`\n`, `\r`, `\t`, `\b`, `\f`, else
/// `\u00XX`), and U+2028/U+2029 (which break JavaScript readers). Bounded, so one event can never
/// write an unbounded line: the message is cut at `maximumMessageBytes`, each key and string at
/// `maximumKeyBytes` / `maximumValueBytes` (cut on a character boundary, ending in `…`), at most
/// `maximumMetadataKeys` keys (the rest counted in `metadata_dropped`), nesting at most
/// `maximumDepth` deep (deeper values as their text).
public enum JSONLogLine {
    /// The longest message written, in UTF-8 bytes.
    public static let maximumMessageBytes = 4_096
    /// The longest metadata key written, in UTF-8 bytes.
    public static let maximumKeyBytes = 128
    /// The longest metadata string written, in UTF-8 bytes.
    public static let maximumValueBytes = 1_024
    /// The most metadata keys written (top level, and in each nested dictionary or array).
    public static let maximumMetadataKeys = 64
    /// How deep arrays and dictionaries nest before the rest is written as text.
    public static let maximumDepth = 4

    /// The keys every line has, which metadata may not shadow.
    static let fixedKeys: Set<String> = ["time", "level", "label", "source", "message", "error", "metadata_dropped"]

    /// The line for `event` (ending in `\n`).
    ///
    /// - Parameters:
    ///   - label: the logger's label.
    ///   - metadata: the metadata merged as the handler sees it (handler, provider, event).
    ///   - unixSeconds: the wall-clock time of the event.
    public static func render(
        level: Logger.Level, message: String, label: String, source: String, metadata: Logger.Metadata, error: String? = nil,
        unixSeconds: Double
    ) -> String {
        var line = "{\"time\":\"\(timestamp(unixSeconds))\",\"level\":\"\(level.rawValue)\",\"label\":"
        appendString(label, limit: maximumKeyBytes, to: &line)
        line += ",\"source\":"
        appendString(source, limit: maximumKeyBytes, to: &line)
        line += ",\"message\":"
        appendString(message, limit: maximumMessageBytes, to: &line)
        if let error {
            line += ",\"error\":"
            appendString(error, limit: maximumValueBytes, to: &line)
        }
        let keys = metadata.keys.sorted()
        for key in keys.prefix(maximumMetadataKeys) {
            line += ","
            appendString(fixedKeys.contains(key) ? "metadata.\(key)" : key, limit: maximumKeyBytes, to: &line)
            line += ":"
            appendValue(metadata[key]!, depth: 1, to: &line)
        }
        if keys.count > maximumMetadataKeys { line += ",\"metadata_dropped\":\(keys.count - maximumMetadataKeys)" }
        return line + "}\n"
    }

    private static func appendValue(_ value: Logger.MetadataValue, depth: Int, to line: inout String) {
        switch value {
        case .string(let text):
            appendString(text, limit: maximumValueBytes, to: &line)
        case .stringConvertible(let convertible):
            appendString(convertible.description, limit: maximumValueBytes, to: &line)
        case .array(let values) where depth < maximumDepth:
            line += "["
            for (index, element) in values.prefix(maximumMetadataKeys).enumerated() {
                if index > 0 { line += "," }
                appendValue(element, depth: depth + 1, to: &line)
            }
            line += "]"
        case .dictionary(let entries) where depth < maximumDepth:
            line += "{"
            for (index, key) in entries.keys.sorted().prefix(maximumMetadataKeys).enumerated() {
                if index > 0 { line += "," }
                appendString(key, limit: maximumKeyBytes, to: &line)
                line += ":"
                appendValue(entries[key]!, depth: depth + 1, to: &line)
            }
            line += "}"
        case .array, .dictionary:
            appendString(value.description, limit: maximumValueBytes, to: &line)
        }
    }

    /// `text` as a JSON string, cut to at most `limit` UTF-8 bytes of `text` (on a character
    /// boundary, then `…`).
    static func appendString(_ text: String, limit: Int, to line: inout String) {
        line += "\""
        var used = 0
        for scalar in text.unicodeScalars {
            used += UTF8.width(scalar)
            if used > limit {
                line += "…"
                break
            }
            switch scalar {
            case "\"": line += "\\\""
            case "\\": line += "\\\\"
            case "\n": line += "\\n"
            case "\r": line += "\\r"
            case "\t": line += "\\t"
            case "\u{08}": line += "\\b"
            case "\u{0C}": line += "\\f"
            case "\u{2028}": line += "\\u2028"
            case "\u{2029}": line += "\\u2029"
            default:
                if scalar.value < 0x20 {
                    let hex = String(scalar.value, radix: 16)
                    line += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                } else {
                    line.unicodeScalars.append(scalar)
                }
            }
        }
        line += "\""
    }

    /// `unixSeconds` as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
    static func timestamp(_ unixSeconds: Double) -> String {
        // In whole milliseconds first: `t - floor(t)` of a large `t` loses the last digit.
        let total = Int64((unixSeconds * 1_000).rounded(.down))
        var seconds = time_t(total / 1_000)
        var parts = tm()
        gmtime_r(&seconds, &parts)
        let milliseconds = Int(total % 1_000)
        func pad(_ value: Int32, _ width: Int) -> String {
            let digits = String(value)
            return String(repeating: "0", count: max(0, width - digits.count)) + digits
        }
        return "\(pad(parts.tm_year + 1900, 4))-\(pad(parts.tm_mon + 1, 2))-\(pad(parts.tm_mday, 2))T"
            + "\(pad(parts.tm_hour, 2)):\(pad(parts.tm_min, 2)):\(pad(parts.tm_sec, 2)).\(pad(Int32(milliseconds), 3))Z"
    }
}
