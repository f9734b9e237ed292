import RelayKernel

/// Parses byte sizes: `8388608`, `512K`, `8M`, `1G` (binary multiples; `KiB`/`MiB`/`GiB` too).
public enum ByteSizeParser {
    /// The suffixes and their multiples, longest first where one ends another.
    private static let suffixes: [(String, Int)] = [
        ("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30), ("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30),
        ("k", 1 << 10), ("m", 1 << 20), ("g", 1 << 30), ("B", 1), ("", 1),
    ]

    /// The size in bytes.
    ///
    /// - Parameters:
    ///   - text: a whole number, optionally followed by a suffix.
    ///   - argument: the option name, for the error.
    ///   - limits: the values the option takes, if known here: a value outside them (a negative
    ///     one, or one past what an `Int` holds, included) is refused naming them, with the text
    ///     as written.
    /// - Throws: `ConfigurationError` for `argument` if the text is not a size, or is out of range.
    public static func bytes(_ text: String, argument: String, in limits: ClosedRange<Int>? = nil) throws(ConfigurationError) -> Int {
        for (suffix, scale) in suffixes where text.hasSuffix(suffix) {
            let digits = text.dropLast(suffix.count)
            let magnitude = digits.hasPrefix("-") ? digits.dropFirst() : digits
            guard !magnitude.isEmpty, magnitude.allSatisfy({ $0.isASCII && $0.isNumber }) else { continue }
            let number = Int(digits)
            let product = number.flatMap { value -> Int? in
                let (product, overflow) = value.multipliedReportingOverflow(by: scale)
                return overflow ? nil : product
            }
            guard let product, product >= 0, limits?.contains(product) ?? true else {
                let negative = digits.hasPrefix("-") && magnitude.contains { $0 != "0" }
                throw ConfigurationError(
                    argument: argument, value: text,
                    reason: limits.map(describe) ?? (negative ? "must not be negative" : "too large"))
            }
            return product
        }
        throw ConfigurationError(argument: argument, value: text, reason: "expected a byte size such as 8388608, 512K or 8M")
    }

    /// Says what `limits` allow: `must be between 1K and 1G bytes` (`from 0 to 2G bytes` from 0).
    public static func describe(_ limits: ClosedRange<Int>) -> String {
        limits.lowerBound == 0
            ? "must be from 0 to \(format(limits.upperBound)) bytes"
            : "must be between \(format(limits.lowerBound)) and \(format(limits.upperBound)) bytes"
    }

    /// Renders a size with the largest suffix that divides it: `2G`, `512K`, `4095`.
    public static func format(_ bytes: Int) -> String {
        for (suffix, scale) in [("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)] where bytes != 0 && bytes % scale == 0 {
            return "\(bytes / scale)\(suffix)"
        }
        return "\(bytes)"
    }
}
