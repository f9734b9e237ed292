import RelayKernel

/// Parses durations written as operators write them: `10ms`, `1s`, `250us`, `2m`, `1.5s`.
public enum DurationParser {
    /// The duration in nanoseconds.
    ///
    /// - Parameters:
    ///   - text: a number followed by `ns`, `us`, `µs`, `ms`, `s` or `m`.
    ///   - argument: the option name, for the error.
    /// - Throws: `ConfigurationError` if the unit is missing or unknown, or the number is bad.
    public static func nanoseconds(_ text: String, argument: String) throws(ConfigurationError) -> UInt64 {
        let units: [(suffix: String, scale: Double)] = [
            ("ns", 1), ("us", 1e3), ("µs", 1e3), ("ms", 1e6), ("s", 1e9), ("m", 60e9),
        ]
        for unit in units where text.hasSuffix(unit.suffix) {
            let number = text.dropLast(unit.suffix.count)
            // "10ms" also ends in "s": only accept the number if the rest parses.
            guard let value = Double(number), value.isFinite, value >= 0, !number.hasPrefix("+") else { continue }
            let nanoseconds = value * unit.scale
            guard nanoseconds < 1e18 else { break }
            return UInt64(nanoseconds.rounded())
        }
        throw ConfigurationError(argument: argument, value: text, reason: "expected a duration such as 10ms, 1s or 500us")
    }

    /// Renders nanoseconds compactly for logs: `10ms`, `1s`, `250us`.
    public static func format(_ nanoseconds: UInt64) -> String {
        if nanoseconds % 1_000_000_000 == 0 { return "\(nanoseconds / 1_000_000_000)s" }
        if nanoseconds % 1_000_000 == 0 { return "\(nanoseconds / 1_000_000)ms" }
        if nanoseconds % 1_000 == 0 { return "\(nanoseconds / 1_000)us" }
        return "\(nanoseconds)ns"
    }
}
