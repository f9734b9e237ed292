import Glibc

/// A JSON value small enough to render without Foundation.
public enum JSONValue: Sendable {
    /// A signed integer.
    case int(Int)
    /// An unsigned integer, rendered exactly even above 2^53.
    case uint(UInt64)
    /// A floating-point number; NaN and infinities render as `null`.
    case double(Double)
    /// A string, escaped on output.
    case string(String)
    /// `true` or `false`.
    case bool(Bool)
    /// `null`.
    case null
    /// An ordered list of values.
    case array([JSONValue])
    /// An object whose keys keep the order given.
    case object([(String, JSONValue)])

    /// Renders the value as compact JSON text.
    public var rendered: String {
        var out = ""
        render(into: &out)
        return out
    }

    /// Appends the rendering of the value to `out`.
    public func render(into out: inout String) {
        switch self {
        case .int(let value):
            out += String(value)
        case .uint(let value):
            out += String(value)
        case .double(let value):
            if value.isFinite {
                out += String(value)
            } else {
                out += "null"
            }
        case .string(let value):
            Self.appendQuoted(value, to: &out)
        case .bool(let value):
            out += value ? "true" : "false"
        case .null:
            out += "null"
        case .array(let values):
            out += "["
            for (index, value) in values.enumerated() {
                if index > 0 { out += "," }
                value.render(into: &out)
            }
            out += "]"
        case .object(let fields):
            out += "{"
            for (index, (key, value)) in fields.enumerated() {
                if index > 0 { out += "," }
                Self.appendQuoted(key, to: &out)
                out += ":"
                value.render(into: &out)
            }
            out += "}"
        }
    }

    /// Appends `text` as a quoted JSON string with the mandatory escapes.
    private static func appendQuoted(_ text: String, to out: inout String) {
        out += "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if scalar.value < 0x20 {
                    let hex = String(scalar.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        out += "\""
    }
}

/// Renders a 64-bit checksum as 16 lowercase hex digits, the form both ends of a run print.
public func hexChecksum(_ value: UInt64) -> String {
    let digits = String(value, radix: 16)
    return String(repeating: "0", count: 16 - digits.count) + digits
}

/// Converts a `CLOCK_MONOTONIC` reading to JSON seconds, or `null` when nothing was recorded.
public func jsonTimestamp(_ nanoseconds: UInt64) -> JSONValue {
    nanoseconds == 0 ? .null : .double(seconds(nanoseconds))
}

/// Prints `value` as one line on stdout and flushes it.
public func printJSON(_ value: JSONValue) {
    print(value.rendered)
    fflush(nil)
}
