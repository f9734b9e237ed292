@testable import RelayKernel
import Testing
@testable import UringRelay

/// The configuration keys of flap damping, the stop delay, the log format and the self-metrics:
/// read from a file, refused with their exact message, overridden by flags, and what a reload
/// does with each.
@Suite("Configuration: flap-hold, stop-delay, log-format, self-metrics")
struct OperationsKeysTests {
    static func resolved(_ yaml: String, flags: ConfigFile = ConfigFile()) throws -> RelayConfiguration {
        try ConfigFile.resolve(file: try ConfigFile.parse(yaml, source: "test.yaml"), flags: flags, allowedCPUs: [0, 1])
    }

    @Test("the file sets each, written as the flags take them; the defaults are off, 30s/10m and text")
    func read() throws {
        let defaults = try Self.resolved("backends: [127.0.0.1:9001]")
        #expect(defaults.flapHoldNanoseconds == 30_000_000_000 && defaults.flapHoldMaxNanoseconds == 600_000_000_000)
        #expect(defaults.stopDelayNanoseconds == 0 && defaults.selfMetricsIntervalNanoseconds == 0)
        #expect(defaults.selfMetricsPrefix == "statsrelay" && defaults.logFormat == .text)
        let set = try Self.resolved("""
            backends: [127.0.0.1:9001]
            flap-hold: 5s
            flap-hold-max: 2m
            stop-delay: 15s
            log-format: json
            self-metrics-interval: 10s
            prefix: infra.relay-1
            """)
        #expect(set.flapHoldNanoseconds == 5_000_000_000 && set.flapHoldMaxNanoseconds == 120_000_000_000)
        #expect(set.stopDelayNanoseconds == 15_000_000_000)
        #expect(set.logFormat == .json)
        #expect(set.selfMetricsIntervalNanoseconds == 10_000_000_000 && set.selfMetricsPrefix == "infra.relay-1")
        // Written back (check-config) and read again: the same configuration.
        let rendered = ConfigFile.render(set)
        #expect(try Self.resolved(rendered) == set)
        #expect(try Self.resolved("backends: [127.0.0.1:9001]\nflap-hold: 0").flapHoldNanoseconds == 0)
    }

    @Test("a bad value is refused naming the key, the line, the value and the limit", arguments: [
        ("flap-hold: 2h\nbackends: [127.0.0.1:9001]", "test.yaml:1: flap-hold: invalid value '2h': must be from 0 to 1h"),
        ("flap-hold: 60s\nflap-hold-max: 30s\nbackends: [127.0.0.1:9001]",
         "test.yaml:2: flap-hold-max: invalid value '30s': must be at least flap-hold (60s) and at most 24h"),
        ("stop-delay: 11m\nbackends: [127.0.0.1:9001]", "test.yaml:1: stop-delay: invalid value '11m': must be from 0 to 600s"),
        ("log-format: xml\nbackends: [127.0.0.1:9001]", "test.yaml:1: log-format: invalid value 'xml': expected text or json"),
        ("self-metrics-interval: 50ms\nbackends: [127.0.0.1:9001]",
         "test.yaml:1: self-metrics-interval: invalid value '50ms': must be 0 (off) or between 100ms and 1h"),
        ("prefix: \"a:b\"\nbackends: [127.0.0.1:9001]",
         "test.yaml:1: prefix: invalid value 'a:b': must not contain ':' (it would end the metric name or the line)"),
    ])
    func refused(yaml: String, message: String) {
        do {
            _ = try Self.resolved(yaml)
            Issue.record("accepted: \(yaml)")
        } catch {
            #expect("\(error)" == message)
        }
    }

    @Test("a flag overrides the file's key")
    func flagsWin() throws {
        var flags = ConfigFile()
        flags.stopDelay = "1s"
        flags.logFormat = "text"
        flags.flapHold = "0"
        flags.prefix = "cli"
        let configuration = try Self.resolved(
            "backends: [127.0.0.1:9001]\nstop-delay: 5s\nlog-format: json\nflap-hold: 20s\nprefix: file", flags: flags)
        #expect(configuration.stopDelayNanoseconds == 1_000_000_000)
        #expect(configuration.logFormat == .text)
        #expect(configuration.flapHoldNanoseconds == 0)
        #expect(configuration.selfMetricsPrefix == "cli")
    }

    @Test("a reload applies flap-hold, flap-hold-max and stop-delay; log-format, self-metrics-interval and prefix wait for a restart")
    func reload() throws {
        let running = try Self.resolved("backends: [127.0.0.1:9001]")
        let candidate = try Self.resolved("""
            backends: [127.0.0.1:9001]
            flap-hold: 1s
            flap-hold-max: 1m
            stop-delay: 3s
            log-format: json
            self-metrics-interval: 1s
            prefix: other
            """)
        let plan = ConfigFileReload(running: running, candidate: candidate, holdBytesInUse: 0)
        #expect(Set(plan.applied.map(\.key)) == ["flap-hold", "flap-hold-max", "stop-delay"])
        #expect(Set(plan.kept.map(\.key)) == ["log-format", "self-metrics-interval", "prefix"])
        #expect(plan.result.flapHoldNanoseconds == 1_000_000_000 && plan.result.stopDelayNanoseconds == 3_000_000_000)
        #expect(plan.result.logFormat == .text && plan.result.selfMetricsPrefix == "statsrelay")
    }
}
