import FuzzSupport
import UringRelay

// Fuzzes the duration and byte-size parsers of the command line. The first input byte picks the
// parser and the limits (none, or those of an option); the rest is the text. Checked:
// - neither traps, whatever the text;
// - a size is accepted exactly when a plain reference reads it (`-?[0-9]+` and one of the
//   suffixes, multiplied without overflow) as a value that is not negative and is within the
//   limits, and then it is that value;
// - an accepted duration lies within the limits, and `format` of it parses back to it;
// - an accepted size likewise survives `format` and parsing back;
// - a refusal names the option and the text as written and gives a reason.

let durationLimits: [ClosedRange<UInt64>?] = [
    nil, RelayConfiguration.flushIntervalLimits, RelayConfiguration.minimumWaitLimits,
    RelayConfiguration.healthTimeoutLimits, RelayConfiguration.dnsRefreshLimits,
]
let sizeLimits: [ClosedRange<Int>?] = [
    nil, RelayConfiguration.receiveBufferLimits, RelayConfiguration.holdBytesLimits, RelayConfiguration.replayRateLimits,
]

/// A plain reading of a byte size: the value, `nil` when the text is no size, or `.max`-plus
/// (`overflow`) when the number is too large for an `Int`.
enum ReferenceSize: Equatable {
    case notASize
    case overflow
    case value(Int)

    init(_ text: String) {
        let scales: [(String, Int)] = [
            ("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30), ("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30),
            ("k", 1 << 10), ("m", 1 << 20), ("g", 1 << 30), ("B", 1), ("", 1),
        ]
        let utf8 = Array(text.utf8)
        for (suffix, scale) in scales {
            let suffixBytes = Array(suffix.utf8)
            guard utf8.count > suffixBytes.count, Array(utf8.suffix(suffixBytes.count)) == suffixBytes else { continue }
            var digits = utf8.dropLast(suffixBytes.count)
            let negative = digits.first == UInt8(ascii: "-")
            if negative { digits = digits.dropFirst() }
            guard !digits.isEmpty, digits.allSatisfy({ (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) }) else { continue }
            var value = 0
            for digit in digits {
                let (times10, overflowA) = value.multipliedReportingOverflow(by: 10)
                let (sum, overflowB) = times10.addingReportingOverflow(Int(digit - UInt8(ascii: "0")))
                if overflowA || overflowB { self = .overflow; return }
                value = sum
            }
            let (scaled, overflow) = value.multipliedReportingOverflow(by: scale)
            if overflow { self = .overflow; return }
            self = .value(negative ? -scaled : scaled)
            return
        }
        self = .notASize
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzConfigValues(_ data: UnsafeRawPointer?, _ size: Int) -> CInt {
    let input = UnsafeRawBufferPointer(start: data, count: size)
    guard let selector = input.first else { return 0 }
    let text = String(decoding: input.dropFirst(), as: UTF8.self)
    if selector & 1 == 0 {
        let limits = durationLimits[Int(selector >> 1) % durationLimits.count]
        do {
            let nanoseconds = try DurationParser.nanoseconds(text, argument: "--d", in: limits)
            require(limits?.contains(nanoseconds) ?? true, "\"\(text)\" -> \(nanoseconds) ns outside \(String(describing: limits))")
            let formatted = DurationParser.format(nanoseconds)
            let again = try? DurationParser.nanoseconds(formatted, argument: "--d")
            require(again == nanoseconds, "\"\(text)\" -> \(nanoseconds) ns -> \"\(formatted)\" -> \(String(describing: again))")
        } catch {
            require(error.argument == "--d" && error.value == text && !error.reason.isEmpty, "error \(error) for \"\(text)\"")
        }
    } else {
        let limits = sizeLimits[Int(selector >> 1) % sizeLimits.count]
        let reference = ReferenceSize(text)
        do {
            let bytes = try ByteSizeParser.bytes(text, argument: "--s", in: limits)
            require(reference == .value(bytes) && bytes >= 0 && (limits?.contains(bytes) ?? true),
                    "\"\(text)\" accepted as \(bytes), reference \(reference), limits \(String(describing: limits))")
            let formatted = ByteSizeParser.format(bytes)
            let again = try? ByteSizeParser.bytes(formatted, argument: "--s")
            require(again == bytes, "\"\(text)\" -> \(bytes) -> \"\(formatted)\" -> \(String(describing: again))")
        } catch {
            require(error.argument == "--s" && error.value == text && !error.reason.isEmpty, "error \(error) for \"\(text)\"")
            if case .value(let value) = reference {
                require(value < 0 || !(limits?.contains(value) ?? true),
                        "\"\(text)\" refused (\(error.reason)) but reads as \(value) within \(String(describing: limits))")
            }
        }
    }
    return 0
}
