/// One sample of a Prometheus text exposition, and a reader of the format's sample lines (for
/// `statsrelay status`, which reads the relay's own `/metrics`).
public struct PrometheusSample: Sendable, Equatable {
    /// The family name, e.g. `statsrelay_lines_dropped_total`.
    public var name: String
    /// The labels, unescaped.
    public var labels: [String: String]
    /// The value.
    public var value: Double

    /// A sample as given.
    public init(name: String, labels: [String: String] = [:], value: Double) {
        self.name = name
        self.labels = labels
        self.value = value
    }

    /// Every sample line of `text`, in order: `name{label="value",…} number`. Comment lines
    /// (`# HELP`, `# TYPE`) and blank lines are skipped; so is a line that does not parse, and
    /// a timestamp after the value is ignored.
    public static func parse(_ text: String) -> [PrometheusSample] {
        text.split(separator: "\n").compactMap { line in
            line.hasPrefix("#") ? nil : parseLine(Array(line.utf8))
        }
    }

    /// One sample line, or `nil` if it is not one.
    static func parseLine(_ bytes: [UInt8]) -> PrometheusSample? {
        var index = 0
        func isNameByte(_ byte: UInt8) -> Bool {
            (byte >= 0x61 && byte <= 0x7a) || (byte >= 0x41 && byte <= 0x5a) || (byte >= 0x30 && byte <= 0x39)
                || byte == UInt8(ascii: "_") || byte == UInt8(ascii: ":")
        }
        func name() -> String? {
            let start = index
            while index < bytes.count, isNameByte(bytes[index]) { index += 1 }
            return index > start ? String(decoding: bytes[start..<index], as: UTF8.self) : nil
        }
        guard let family = name() else { return nil }
        var labels: [String: String] = [:]
        if index < bytes.count, bytes[index] == UInt8(ascii: "{") {
            index += 1
            while index < bytes.count, bytes[index] != UInt8(ascii: "}") {
                guard let label = name(), index + 1 < bytes.count, bytes[index] == UInt8(ascii: "="),
                      bytes[index + 1] == UInt8(ascii: "\"") else { return nil }
                index += 2
                var value: [UInt8] = []
                while index < bytes.count, bytes[index] != UInt8(ascii: "\"") {
                    if bytes[index] == UInt8(ascii: "\\"), index + 1 < bytes.count {
                        index += 1
                        value.append(bytes[index] == UInt8(ascii: "n") ? UInt8(ascii: "\n") : bytes[index])
                    } else {
                        value.append(bytes[index])
                    }
                    index += 1
                }
                guard index < bytes.count else { return nil }
                index += 1
                labels[label] = String(decoding: value, as: UTF8.self)
                if index < bytes.count, bytes[index] == UInt8(ascii: ",") { index += 1 }
            }
            guard index < bytes.count else { return nil }
            index += 1
        }
        while index < bytes.count, bytes[index] == UInt8(ascii: " ") { index += 1 }
        let start = index
        while index < bytes.count, bytes[index] != UInt8(ascii: " ") { index += 1 }
        let text = String(decoding: bytes[start..<index], as: UTF8.self)
        let value: Double? = switch text {
        case "+Inf": .infinity
        case "-Inf": -.infinity
        case "NaN": .nan
        default: Double(text)
        }
        return value.map { PrometheusSample(name: family, labels: labels, value: $0) }
    }
}
