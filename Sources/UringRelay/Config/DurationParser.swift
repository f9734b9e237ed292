import RelayKernel

/// Parses durations written as operators write them: `10ms`, `1s`, `250us`, `2m`, `1h`, `1.5s`
/// (the units of Go's `time.ParseDuration`).
public enum DurationParser {
    /// The units, longest suffix first where one ends another ("ms" before "s").
    private static let units: [(suffix: String, scale: Double)] = [
        ("ns", 1), ("us", 1e3), ("µs", 1e3), ("ms", 1e6), ("s", 1e9), ("m", 60e9), ("h", 3_600e9),
    ]

    /// The duration in nanoseconds.
    ///
    /// - Parameters:
    ///   - text: a number followed by `ns`, `us`, `µs`, `ms`, `s`, `m` or `h`, or a bare `0`.
    ///   - argument: the option name, for the error.
    ///   - limits: the values the option takes, if known here: a value outside them (a negative
    ///     one included) is refused naming them, with the text as written.
    /// - Throws: `ConfigurationError` if the unit is missing or unknown, the number is bad, or the
    ///   value is negative, beyond any duration or outside `limits`.
    public static func nanoseconds(
        _ text: String, argument: String, in limits: ClosedRange<UInt64>? = nil
    ) throws(ConfigurationError) -> UInt64 {
        // A bare 0 needs no unit (as in Go): it is how operators switch an interval off.
        if text == "0" {
            if let limits, !limits.contains(0) {
                throw ConfigurationError(argument: argument, value: text, reason: describe(limits))
            }
            return 0
        }
        for unit in units where text.hasSuffix(unit.suffix) {
            let number = text.dropLast(unit.suffix.count)
            // "10ms" also ends in "s": only accept the number if the rest parses.
            guard let value = Double(number), value.isFinite, !number.hasPrefix("+") else { continue }
            let nanoseconds = value * unit.scale
            guard nanoseconds >= 0 && nanoseconds < 1e18 else {
                throw ConfigurationError(
                    argument: argument, value: text,
                    reason: limits.map(describe) ?? (nanoseconds < 0 ? "must not be negative" : "must be under 100000h"))
            }
            let result = UInt64(nanoseconds.rounded())
            if let limits, !limits.contains(result) {
                throw ConfigurationError(argument: argument, value: text, reason: describe(limits))
            }
            return result
        }
        throw ConfigurationError(argument: argument, value: text, reason: "expected a duration such as 10ms, 1s or 500us (units: ns, us, ms, s, m, h)")
    }

    /// Says what `limits` allow: `must be between 100us and 60s` (`from 0 to 10ms` from 0).
    public static func describe(_ limits: ClosedRange<UInt64>) -> String {
        limits.lowerBound == 0
            ? "must be from 0 to \(format(limits.upperBound))"
            : "must be between \(format(limits.lowerBound)) and \(format(limits.upperBound))"
    }

    /// Renders nanoseconds compactly for logs: `10ms`, `1s`, `250us`, `24h`.
    public static func format(_ nanoseconds: UInt64) -> String {
        if nanoseconds != 0 && nanoseconds % 3_600_000_000_000 == 0 { return "\(nanoseconds / 3_600_000_000_000)h" }
        if nanoseconds % 1_000_000_000 == 0 { return "\(nanoseconds / 1_000_000_000)s" }
        if nanoseconds % 1_000_000 == 0 { return "\(nanoseconds / 1_000_000)ms" }
        if nanoseconds % 1_000 == 0 { return "\(nanoseconds / 1_000)us" }
        return "\(nanoseconds)ns"
    }
}
