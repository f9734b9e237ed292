import RelayKernel
import Testing
@testable import UringRelay

@Suite("Option limits: every duration and size out of range is refused naming its limit")
struct OptionLimitsTests {
    @Test("durations take Go's units, hours included", arguments: [
        ("1h", UInt64(3_600_000_000_000)), ("1.5h", 5_400_000_000_000), ("90m", 5_400_000_000_000), ("24h", 86_400_000_000_000),
        ("0s", 0), ("-0s", 0),
    ])
    func hours(_ text: String, _ nanoseconds: UInt64) throws {
        #expect(try DurationParser.nanoseconds(text, argument: "--dns-refresh") == nanoseconds)
    }

    /// Each duration option with values past either end (a negative one, one beyond any
    /// duration) and the exact message: the text as written and the limits.
    @Test("a duration out of range names the option, the value as written and both limits", arguments: [
        ("--flush-interval", RelayConfiguration.flushIntervalLimits, "1h", "must be between 100us and 60s"),
        ("--flush-interval", RelayConfiguration.flushIntervalLimits, "2m", "must be between 100us and 60s"),
        ("--flush-interval", RelayConfiguration.flushIntervalLimits, "50us", "must be between 100us and 60s"),
        ("--flush-interval", RelayConfiguration.flushIntervalLimits, "-1s", "must be between 100us and 60s"),
        ("--flush-interval", RelayConfiguration.flushIntervalLimits, "1000000000000h", "must be between 100us and 60s"),
        ("--shutdown-timeout", RelayConfiguration.shutdownTimeoutLimits, "1h", "must be between 10ms and 60s"),
        ("--min-wait", RelayConfiguration.minimumWaitLimits, "20ms", "must be from 0 to 10ms"),
        ("--min-wait", RelayConfiguration.minimumWaitLimits, "-1us", "must be from 0 to 10ms"),
        ("--health-interval", RelayConfiguration.healthIntervalLimits, "2h", "must be between 10ms and 1h"),
        ("--health-interval", RelayConfiguration.healthIntervalLimits, "5ms", "must be between 10ms and 1h"),
        ("--health-timeout", RelayConfiguration.healthTimeoutLimits, "500us", "must be between 1ms and 1h"),
        ("--dns-refresh", RelayConfiguration.dnsRefreshLimits, "25h", "must be between 100ms and 24h"),
        ("--dns-refresh", RelayConfiguration.dnsRefreshLimits, "10ms", "must be between 100ms and 24h"),
    ])
    func durationOutOfRange(argument: String, limits: ClosedRange<UInt64>, text: String, reason: String) {
        #expect(throws: ConfigurationError(argument: argument, value: text, reason: reason)) {
            try DurationParser.nanoseconds(text, argument: argument, in: limits)
        }
    }

    @Test("a duration within range parses, at both limits", arguments: [
        (RelayConfiguration.flushIntervalLimits, "100us", UInt64(100_000)), (RelayConfiguration.flushIntervalLimits, "60s", 60_000_000_000),
        (RelayConfiguration.flushIntervalLimits, "1m", 60_000_000_000), (RelayConfiguration.dnsRefreshLimits, "24h", 86_400_000_000_000),
        (RelayConfiguration.minimumWaitLimits, "0us", 0),
    ])
    func durationInRange(limits: ClosedRange<UInt64>, text: String, nanoseconds: UInt64) throws {
        #expect(try DurationParser.nanoseconds(text, argument: "--x", in: limits) == nanoseconds)
    }

    @Test("a size out of range names the option, the value as written and both limits", arguments: [
        ("--rcvbuf", RelayConfiguration.receiveBufferLimits, "3G", "must be between 4K and 2147483647 bytes"),
        ("--rcvbuf", RelayConfiguration.receiveBufferLimits, "1K", "must be between 4K and 2147483647 bytes"),
        ("--rcvbuf", RelayConfiguration.receiveBufferLimits, "-8M", "must be between 4K and 2147483647 bytes"),
        ("--rcvbuf", RelayConfiguration.receiveBufferLimits, "99999999999999999G", "must be between 4K and 2147483647 bytes"),
        ("--hold-bytes", RelayConfiguration.holdBytesLimits, "-1", "must be from 0 to 2G bytes"),
        ("--hold-bytes", RelayConfiguration.holdBytesLimits, "3G", "must be from 0 to 2G bytes"),
        ("--replay-rate", RelayConfiguration.replayRateLimits, "2G", "must be between 1K and 1G bytes"),
        ("--replay-rate", RelayConfiguration.replayRateLimits, "512", "must be between 1K and 1G bytes"),
    ])
    func sizeOutOfRange(argument: String, limits: ClosedRange<Int>, text: String, reason: String) {
        #expect(throws: ConfigurationError(argument: argument, value: text, reason: reason)) {
            try ByteSizeParser.bytes(text, argument: argument, in: limits)
        }
    }

    @Test("what is not a duration or a size at all says what is expected", arguments: ["1d", "soon", "", "-"])
    func notAValue(_ text: String) {
        #expect(throws: ConfigurationError(
            argument: "--flush-interval", value: text, reason: "expected a duration such as 10ms, 1s or 500us (units: ns, us, ms, s, m, h)")
        ) { try DurationParser.nanoseconds(text, argument: "--flush-interval", in: RelayConfiguration.flushIntervalLimits) }
        #expect(throws: ConfigurationError(argument: "--rcvbuf", value: text, reason: "expected a byte size such as 8388608, 512K or 8M")) {
            try ByteSizeParser.bytes(text, argument: "--rcvbuf", in: RelayConfiguration.receiveBufferLimits)
        }
    }

    /// A configuration built in code (not from the command line) is checked against the same
    /// limits, and says them the same way.
    @Test("validate() names the limit of every duration and size setting", arguments: [
        ("--flush-interval", "must be between 100us and 60s"), ("--min-wait", "must be from 0 to 10ms"),
        ("--shutdown-timeout", "must be between 10ms and 60s"), ("--health-interval", "must be between 10ms and 1h"),
        ("--health-timeout", "must be between 1ms and --health-interval (1s)"), ("--dns-refresh", "must be between 100ms and 24h"),
        ("--rcvbuf", "must be between 4K and 2147483647 bytes"), ("--hold-bytes", "must be from 0 to 2G bytes"),
        ("--replay-rate", "must be between 1K and 1G bytes"),
    ])
    func validateNamesLimits(argument: String, reason: String) throws {
        var configuration = RelayConfiguration(backends: [try BackendAddress(parsing: "127.0.0.1:9001")])
        switch argument {
        case "--flush-interval": configuration.flushIntervalNanoseconds = 61_000_000_000
        case "--min-wait": configuration.minimumWaitMicroseconds = 10_001
        case "--shutdown-timeout": configuration.shutdownTimeoutNanoseconds = 5_000_000
        case "--health-interval": configuration.healthIntervalNanoseconds = 7_200_000_000_000
        case "--health-timeout": configuration.healthTimeoutNanoseconds = 2_000_000_000
        case "--dns-refresh": configuration.dnsRefreshNanoseconds = 90_000_000_000_000
        case "--rcvbuf": configuration.receiveBufferBytes = 3 << 30
        case "--hold-bytes": configuration.holdBytes = -1
        default: configuration.replayBytesPerSecond = 2 << 30
        }
        let error = try #require(throws: ConfigurationError.self) { try configuration.validate() }
        #expect(error.argument == argument)
        #expect(error.reason == reason)
    }
}
