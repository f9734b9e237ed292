/// The numbers the Datadog agent's DogStatsD parser takes, decided over bytes without copying or
/// converting: what Go's `strconv.ParseFloat(s, 64)` accepts without an error (values and
/// sample rates) and what `strconv.ParseInt(s, 10, 0)` does (timestamps).
///
/// `ParseFloat` takes Go's floating-point literal syntax and a few words:
/// ```
/// [+-] digits [. digits] [(e|E) [+-] digits]        1  -2.5  .5  5.  1e3  1_000  007
/// [+-] 0x hexdigits [. hexdigits] (p|P) [+-] digits  0x1p-2  0x.8P1  0x_1p0 (the exponent is required)
/// [+-] inf | infinity,  nan  (any case)              Inf  -infinity  NaN (not +NaN)
/// ```
/// with `_` only between digits (or after `0x`), and refuses a value whose magnitude rounds
/// past the largest double (`1e400`, `0x1p1024`) with a range error; one that rounds to zero
/// is taken. The decision on range follows Go's own arithmetic: an exponent's digits stop
/// counting once it reaches 10 000, and a decimal's point is placed after at most 800 digits
/// (Go's slow path keeps 800), so for the 309-digit numbers near the limit the answer is the
/// exact one.
enum GoNumber {
    /// What `ParseFloat` makes of a number.
    enum Float: Equatable {
        /// An error: bad syntax, or out of range.
        case invalid
        /// A finite value.
        case finite
        /// `NaN` or an infinity, written as such.
        case nonFinite
    }

    /// The decimal digits of 2¹⁰²⁴ − 2⁹⁷⁰: the largest double plus half a unit in its last
    /// place. A value this large or larger rounds to infinity (a tie rounds to the even
    /// mantissa, which is the carry), so `ParseFloat` refuses it.
    static let overflowDigits: [UInt8] = Array(
        ("179769313486231580793728971405303415079934132710037826936173778980444968292764750946649017977587207096330286"
            + "416692887910946555547851940402630657488671505820681908902000708383676273854845817711531764475730270069855"
            + "571366959622842914819860834936475292719074168444365510704342711559699508093042880177904174497792").utf8)

    /// How `ParseFloat(s, 64)` takes the bytes `range`.
    static func float(_ bytes: Span<UInt8>, _ range: Range<Int>) -> Float {
        let end = range.upperBound
        guard !range.isEmpty else { return .invalid }
        if isSpecial(bytes, range) { return .nonFinite }
        var index = range.lowerBound
        if bytes[index] == UInt8(ascii: "+") || bytes[index] == UInt8(ascii: "-") { index &+= 1 }
        var hex = false
        if index &+ 2 < end && bytes[index] == UInt8(ascii: "0") && lower(bytes[index &+ 1]) == UInt8(ascii: "x") {
            hex = true
            index &+= 2
        }
        var sawDot = false
        var sawDigits = false
        var underscores = false
        // Go's counts: digits from the first that is not a leading zero (`nd`), and the point's
        // place in them (`dp`), also as Go's 800-digit decimal keeps it (`cappedPoint`).
        var digits = 0
        var point = 0
        var cappedPoint = 0
        // A decimal against `overflowDigits`, digit by digit: its order and the digits compared.
        var order = 0
        var compared = 0
        // A hex number: its first digit that is not zero, and whether its leading 54 bits (the
        // 53 of a double and the rounding bit) are all ones so far, with how many remain.
        var leading: UInt8 = 0
        var onesNeeded = 54
        var allOnes = true
        scan: while index < end {
            let byte = bytes[index]
            var value = byte &- UInt8(ascii: "0")
            if value >= 10 {
                let letter = lower(byte) &- UInt8(ascii: "a")
                if hex && letter < 6 {
                    value = letter &+ 10
                } else if byte == UInt8(ascii: "_") {
                    underscores = true
                    index &+= 1
                    continue
                } else if byte == UInt8(ascii: ".") && !sawDot {
                    sawDot = true
                    point = digits
                    cappedPoint = min(digits, 800)
                    index &+= 1
                    continue
                } else {
                    break scan
                }
            }
            sawDigits = true
            index &+= 1
            if value == 0 && digits == 0 {
                point &-= 1
                cappedPoint &-= 1
                continue
            }
            if digits == 0 { leading = value }
            digits &+= 1
            if hex {
                if onesNeeded > 0 && allOnes {
                    let width = digits == 1 ? bitWidth(value) : 4
                    let taken = min(width, onesNeeded)
                    allOnes = value >> UInt8(width &- taken) == UInt8(1 << taken) &- 1
                    onesNeeded &-= taken
                }
            } else if order == 0 && compared < overflowDigits.count {
                let limit = overflowDigits[compared] &- UInt8(ascii: "0")
                order = value < limit ? -1 : value > limit ? 1 : 0
                compared &+= 1
            }
        }
        guard sawDigits else { return .invalid }
        if !sawDot {
            point = digits
            cappedPoint = min(digits, 800)
        }
        var exponent = 0
        if index < end && lower(bytes[index]) == (hex ? UInt8(ascii: "p") : UInt8(ascii: "e")) {
            index &+= 1
            guard index < end else { return .invalid }
            var negative = false
            if bytes[index] == UInt8(ascii: "+") || bytes[index] == UInt8(ascii: "-") {
                negative = bytes[index] == UInt8(ascii: "-")
                index &+= 1
            }
            guard index < end, bytes[index] &- UInt8(ascii: "0") < 10 else { return .invalid }
            while index < end {
                let byte = bytes[index]
                if byte == UInt8(ascii: "_") {
                    underscores = true
                } else if byte &- UInt8(ascii: "0") < 10 {
                    // Go stops adding digits once the exponent reaches 10 000.
                    if exponent < 10_000 { exponent = exponent &* 10 &+ Int(byte &- UInt8(ascii: "0")) }
                } else {
                    break
                }
                index &+= 1
            }
            if negative { exponent = -exponent }
        } else if hex {
            return .invalid
        }
        guard index == end else { return .invalid }
        if underscores && !underscoresAllowed(bytes, range.lowerBound..<end) { return .invalid }
        if digits == 0 { return .finite }
        if hex {
            // The value is 0.D × 16^point × 2^exponent; its leading 1 is bit `top`.
            let top = 4 &* (point &- 1) &+ (bitWidth(leading) &- 1) &+ exponent
            return top > 1023 || (top == 1023 && allOnes && onesNeeded == 0) ? .invalid : .finite
        }
        // The value is 0.D × 10^point; the limit is 0.(overflowDigits) × 10^309. A decimal
        // shorter than the limit's 309 digits and equal so far is smaller: the limit's last
        // digit is not 0.
        let decimalPoint = cappedPoint &+ exponent
        if decimalPoint != 309 { return decimalPoint > 309 ? .invalid : .finite }
        if order == 0 && compared < overflowDigits.count { order = -1 }
        return order >= 0 ? .invalid : .finite
    }

    /// Whether `range` is `[+-]inf`, `[+-]infinity` or `nan`, in any case: Go's special
    /// values, which must be the whole string (`info` and `+nan` are errors).
    private static func isSpecial(_ bytes: Span<UInt8>, _ range: Range<Int>) -> Bool {
        var index = range.lowerBound
        let first = bytes[index]
        if first == UInt8(ascii: "+") || first == UInt8(ascii: "-") {
            index &+= 1
        } else if matches(bytes, index..<range.upperBound, "nan") {
            return true
        }
        return matches(bytes, index..<range.upperBound, "inf") || matches(bytes, index..<range.upperBound, "infinity")
    }

    /// Whether `range` is `word` (lowercase ASCII) in any case.
    private static func matches(_ bytes: Span<UInt8>, _ range: Range<Int>, _ word: StaticString) -> Bool {
        guard range.count == word.utf8CodeUnitCount else { return false }
        return word.withUTF8Buffer { letters in
            for offset in 0..<letters.count where lower(bytes[range.lowerBound &+ offset]) != letters[offset] { return false }
            return true
        }
    }

    /// Go's `underscoreOK`: each `_` between two digits, or between a base prefix and a digit.
    private static func underscoresAllowed(_ bytes: Span<UInt8>, _ range: Range<Int>) -> Bool {
        var index = range.lowerBound
        let end = range.upperBound
        if index < end && (bytes[index] == UInt8(ascii: "+") || bytes[index] == UInt8(ascii: "-")) { index &+= 1 }
        // What came last: 0 a digit or base prefix, 1 an underscore, 2 anything else, 3 nothing yet.
        var last = 3
        var hex = false
        if end &- index >= 2 && bytes[index] == UInt8(ascii: "0") {
            let base = lower(bytes[index &+ 1])
            if base == UInt8(ascii: "b") || base == UInt8(ascii: "o") || base == UInt8(ascii: "x") {
                index &+= 2
                last = 0
                hex = base == UInt8(ascii: "x")
            }
        }
        while index < end {
            let byte = bytes[index]
            index &+= 1
            if byte &- UInt8(ascii: "0") < 10 || (hex && lower(byte) &- UInt8(ascii: "a") < 6) {
                last = 0
            } else if byte == UInt8(ascii: "_") {
                if last != 0 { return false }
                last = 1
            } else {
                if last == 1 { return false }
                last = 2
            }
        }
        return last != 1
    }

    /// Whether `range` is a timestamp the agent takes: `ParseInt(s, 10, 0)` without an error
    /// (`[+-]` then decimal digits, within 64 bits) and at least 1.
    static func isTimestamp(_ bytes: Span<UInt8>, _ range: Range<Int>) -> Bool {
        var index = range.lowerBound
        if index < range.upperBound && bytes[index] == UInt8(ascii: "+") {
            index &+= 1
        } else if index < range.upperBound && bytes[index] == UInt8(ascii: "-") {
            // Negative or zero: below 1, if it parses at all.
            return false
        }
        guard index < range.upperBound else { return false }
        let largest = UInt64(Int64.max)
        var value: UInt64 = 0
        var tooLarge = false
        while index < range.upperBound {
            let digit = UInt64(bytes[index] &- UInt8(ascii: "0"))
            guard digit < 10 else { return false }
            // Past Int64.max is a range error, but every byte must still be a digit.
            if value > (largest &- digit) / 10 { tooLarge = true } else { value = value &* 10 &+ digit }
            index &+= 1
        }
        return !tooLarge && value >= 1
    }

    /// ASCII lowercase as Go's `lower` makes it: the 0x20 bit set.
    @inline(__always)
    private static func lower(_ byte: UInt8) -> UInt8 { byte | 0x20 }

    /// The bits of a hex digit from its highest 1: 1 for 1, 4 for 8-15.
    @inline(__always)
    private static func bitWidth(_ digit: UInt8) -> Int { 8 &- digit.leadingZeroBitCount }
}
