import Testing
@testable import UringRelay

/// `GoNumber` against Go's own answers: every verdict below is what `strconv.ParseFloat(s, 64)`
/// and `strconv.ParseInt(s, 10, 0)` (then `>= 1`) returned for the string under Go 1.19, whose
/// parsing the Datadog agent's DogStatsD server calls. (The same comparison over 144 000
/// generated strings, near the overflow limit and of random bytes of the number alphabet, found
/// no difference when this was written.)
@Suite("Go's number syntax, as the Datadog agent parses values, rates and timestamps")
struct GoNumberTests {
    /// The largest double plus half a unit in its last place, 2¹⁰²⁴ − 2⁹⁷⁰, and one below it.
    static let limit = String(decoding: GoNumber.overflowDigits, as: UTF8.self)
    static let belowLimit = String(limit.dropLast()) + "1"

    /// Strings and ParseFloat's verdicts.
    static let floats: [(String, GoNumber.Float)] = [
        ("1", .finite), ("-2.5", .finite), ("+3", .finite), (".5", .finite), ("5.", .finite),
        ("007", .finite), ("1e3", .finite), ("1.5E-2", .finite), ("1e+308", .finite),
        // Underflow is no error; overflow is.
        ("1e-400", .finite), ("1e400", .invalid), ("-1e400", .invalid),
        ("1.7976931348623157e308", .finite), ("1.7976931348623158e308", .finite),
        (belowLimit, .finite), (limit, .invalid), (limit + ".0", .invalid), ("0." + limit + "e309", .invalid),
        ("0." + belowLimit + "e309", .finite),
        // Go's slow path keeps 800 digits and places the point after them: this 10^309 is taken.
        ("1" + String(repeating: "0", count: 1000) + "e-690", .finite),
        ("1" + String(repeating: "0", count: 700) + "e-390", .invalid),
        ("1e99999", .invalid), ("0.1e-99999", .finite),
        // Hexadecimal: the binary exponent is required.
        ("0x1p-2", .finite), ("0X.8P1", .finite), ("0x1.fffffffffffffp1023", .finite),
        ("0x1.fffffffffffff8p1023", .invalid), ("0x1p1024", .invalid), ("0x1", .invalid), ("0xp1", .invalid),
        // Underscores between digits, or after a base prefix.
        ("0x_1p0", .finite), ("1_000", .finite), ("1e1_0", .finite), ("1__0", .invalid), ("_1", .invalid),
        ("1_", .invalid),
        // The words, whole.
        ("NaN", .nonFinite), ("nan", .nonFinite), ("Inf", .nonFinite), ("-Infinity", .nonFinite), ("INF", .nonFinite),
        ("+nan", .invalid), ("infinit", .invalid), ("info", .invalid),
        ("", .invalid), (".", .invalid), ("1e", .invalid), ("e1", .invalid), ("++1", .invalid), ("1.2.3", .invalid),
        ("0b1", .invalid), ("1 ", .invalid), ("T1", .invalid),
    ]

    @Test("ParseFloat: syntax, words and range", arguments: floats)
    func float(_ text: String, _ expected: GoNumber.Float) {
        let bytes = Array(text.utf8)
        let verdict = bytes.withUnsafeBufferPointer { GoNumber.float($0.span, 0..<bytes.count) }
        #expect(verdict == expected, "\(text.prefix(40)) (\(bytes.count) bytes)")
    }

    @Test("ParseInt, then at least 1: timestamps", arguments: [
        ("1", true), ("+5", true), ("007", true), ("9223372036854775807", true), ("00009223372036854775807", true),
        ("9223372036854775808", false), ("99999999999999999999", false), ("0", false), ("-0", false), ("-5", false),
        ("", false), ("+", false), ("1.5", false), ("1e3", false), ("1_0", false), ("T1", false),
    ])
    func timestamp(_ text: String, _ expected: Bool) {
        let bytes = Array(text.utf8)
        #expect(bytes.withUnsafeBufferPointer { GoNumber.isTimestamp($0.span, 0..<bytes.count) } == expected, "\(text)")
    }
}
