import Foundation
import Testing
@testable import UringRelay

/// A snapshot with two backends (one whose identity holds every character the format escapes),
/// a few counts set, and fixed facts.
func exampleSnapshot(backends: [String] = ["10.0.0.1:8125", "10.0.0.2:8125:a\"b\\c\nd"]) -> RelaySnapshot {
    var counters = RelayCounters(backends: backends)
    counters[.datagramsReceived] = 12
    counters[.linesReceived] = 40
    counters[.linesForwarded] = 33
    counters[.linesDroppedMissingColon] = 7
    counters[.datagramsDroppedKernel] = 2
    if backends.count == 2 {
        counters[.linesSent, backend: 0] = 20
        counters[.linesSent, backend: 1] = 13
        counters[.linesRefused, backend: 1] = 5
    }
    return RelaySnapshot(
        counters: counters,
        backends: backends.enumerated().map { index, identity in
            .init(identity: identity, up: index == 0, stateChanges: index, stateSinceUnixSeconds: 1_700_000_000.5)
        },
        listeners: ["udp:127.0.0.1:8125"], ioDriver: "portable", version: "9.8.7", hashMode: "jump",
        ringFingerprint: "0123456789abcdef", holdInUseBytes: 65_536, holdLimitBytes: 1 << 26, failOpenActivations: 1,
        failingOpen: false, workerCounterAgesSeconds: [0.25, 0.5], logWriteErrors: 3, startTimeUnixSeconds: 1_699_999_000)
}

/// `promtool check metrics` on `exposition`, or a skip where promtool is not installed.
func promtoolCheckMetrics(_ exposition: String) throws -> (status: Int32, output: String) {
    let candidates = (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":")
        .map { URL(fileURLWithPath: String($0)).appendingPathComponent("promtool") }
    guard let promtool = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0.path) }) else {
        try Test.cancel("promtool is not installed (Debian package prometheus): the exposition was not checked by it")
    }
    let process = Process()
    process.executableURL = promtool
    process.arguments = ["check", "metrics"]
    let input = Pipe()
    let output = Pipe()
    process.standardInput = input
    process.standardOutput = output
    process.standardError = output
    try process.run()
    input.fileHandleForWriting.write(Data(exposition.utf8))
    try input.fileHandleForWriting.close()
    let printed = output.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: printed, as: UTF8.self))
}

@Suite("Prometheus exposition")
struct PrometheusExpositionTests {
    @Test("label values escape backslash, double quote and line feed, and nothing else", arguments: [
        ("plain:8125", "plain:8125"),
        ("a\\b", "a\\\\b"),
        ("say \"hi\"", "say \\\"hi\\\""),
        ("two\nlines", "two\\nlines"),
        ("tab\tand é", "tab\tand é"),
        ("\\\"\n", "\\\\\\\"\\n"),
    ])
    func labelEscaping(_ raw: String, _ escaped: String) {
        #expect(PrometheusExposition.escapeLabelValue(raw) == escaped)
    }

    @Test("HELP text escapes backslash and line feed only", arguments: [
        ("a \"quoted\" word", "a \"quoted\" word"),
        ("back\\slash", "back\\\\slash"),
        ("one\ntwo", "one\\ntwo"),
    ])
    func helpEscaping(_ raw: String, _ escaped: String) {
        #expect(PrometheusExposition.escapeHelp(raw) == escaped)
    }

    @Test("counter dot names give the family and reason", arguments: [
        ("statsrelay.lines_forwarded", "statsrelay_lines_forwarded_total", nil),
        ("statsrelay.lines_dropped.nul_byte", "statsrelay_lines_dropped_total", "nul_byte"),
        ("statsrelay.datagrams_dropped.kernel", "statsrelay_datagrams_dropped_total", "kernel"),
        ("statsrelay.backend.bytes_sent", "statsrelay_backend_bytes_sent_total", nil),
        ("statsrelay.backend.lines_dropped.refused", "statsrelay_backend_lines_dropped_total", "refused"),
    ] as [(String, String, String?)])
    func derivedNames(_ dotName: String, _ family: String, _ reason: String?) {
        let exposition = MetricFamily.exposition(ofCounterNamed: dotName)
        #expect(exposition.family == family)
        #expect(exposition.reason == reason)
    }

    @Test("every counter of both tables lands in a declared family whose labels fit it")
    func everyCounterDeclared() {
        let families = Dictionary(uniqueKeysWithValues: MetricFamily.all.map { ($0.name, $0) })
        for counter in RelayCounter.allCases {
            let (name, reason) = counter.exposition
            let family = families[name]
            #expect(family != nil, "\(counter.name) → \(name) has no HELP in MetricFamily.all")
            #expect(family?.source == .relayCounters, "\(name)")
            #expect(family?.labels.contains("reason") == (reason != nil), "\(counter.name): reason label")
        }
        for counter in BackendCounter.allCases {
            let (name, reason) = counter.exposition
            let family = families[name]
            #expect(family != nil, "\(counter.name) → \(name) has no HELP in MetricFamily.all")
            #expect(family?.source == .backendCounters, "\(name)")
            #expect(family?.labels.contains("backend") == true, "\(name): backend label")
            #expect(family?.labels.contains("reason") == (reason != nil), "\(counter.name): reason label")
        }
        #expect(PrometheusExposition.undeclaredCounterFamilies(declared: MetricFamily.all).isEmpty)
    }

    @Test("family names: statsrelay_ prefix, snake case, _total exactly on counters, declared once")
    func familyNames() {
        #expect(Set(MetricFamily.all.map(\.name)).count == MetricFamily.all.count)
        for family in MetricFamily.all {
            #expect(family.name.hasPrefix("statsrelay_"))
            #expect(family.name.allSatisfy { $0.isLowercase || $0.isNumber || $0 == "_" }, "\(family.name)")
            #expect(family.name.hasSuffix("_total") == (family.kind == .counter), "\(family.name)")
            #expect(!family.help.isEmpty, "\(family.name)")
        }
    }

    @Test("every family is written as HELP, then TYPE, then its samples, and no sample is outside its family")
    func helpAndTypeForEveryFamily() {
        let text = PrometheusExposition.render(exampleSnapshot())
        var current: String?
        var helped: [String] = []
        var typed: [String] = []
        for line in text.split(separator: "\n", omittingEmptySubsequences: false).dropLast() {
            let words = line.split(separator: " ", maxSplits: 3).map(String.init)
            if line.hasPrefix("# HELP ") {
                #expect(current == nil || typed.last == current, "a family ended before its TYPE: \(line)")
                helped.append(words[2])
                current = nil
            } else if line.hasPrefix("# TYPE ") {
                #expect(helped.last == words[2], "TYPE without HELP just before: \(line)")
                #expect(["counter", "gauge"].contains(words[3]))
                typed.append(words[2])
                current = words[2]
            } else {
                let name = String(line.prefix { $0 != "{" && $0 != " " })
                #expect(name == current, "sample outside its family: \(line)")
            }
        }
        #expect(helped == MetricFamily.all.map(\.name))
        #expect(typed == helped)
        #expect(!text.isEmpty && text.hasSuffix("\n"))
    }

    @Test("samples carry the snapshot's values and labels, escaped")
    func samples() {
        let text = PrometheusExposition.render(exampleSnapshot())
        let lines = Set(text.split(separator: "\n").map(String.init))
        for expected in [
            #"statsrelay_datagrams_received_total{listener="udp:127.0.0.1:8125"} 12"#,
            #"statsrelay_lines_received_total{listener="udp:127.0.0.1:8125"} 40"#,
            #"statsrelay_lines_forwarded_total 33"#,
            #"statsrelay_lines_dropped_total{reason="missing_colon"} 7"#,
            #"statsrelay_lines_dropped_total{reason="refused"} 5"#,
            #"statsrelay_datagrams_dropped_total{listener="udp:127.0.0.1:8125",reason="kernel"} 2"#,
            #"statsrelay_backend_lines_sent_total{backend="10.0.0.1:8125"} 20"#,
            #"statsrelay_backend_lines_sent_total{backend="10.0.0.2:8125:a\"b\\c\nd"} 13"#,
            #"statsrelay_backend_lines_dropped_total{backend="10.0.0.2:8125:a\"b\\c\nd",reason="refused"} 5"#,
            #"statsrelay_backend_up{backend="10.0.0.1:8125"} 1"#,
            #"statsrelay_backend_up{backend="10.0.0.2:8125:a\"b\\c\nd"} 0"#,
            #"statsrelay_backend_state_changes_total{backend="10.0.0.2:8125:a\"b\\c\nd"} 1"#,
            #"statsrelay_backend_state_since_timestamp_seconds{backend="10.0.0.1:8125"} 1700000000.5"#,
            #"statsrelay_io_driver_info{driver="portable"} 1"#,
            #"statsrelay_build_info{version="9.8.7"} 1"#,
            #"statsrelay_ring_fingerprint_info{fingerprint="0123456789abcdef",hash_mode="jump"} 1"#,
            #"statsrelay_hold_in_use_bytes 65536"#,
            #"statsrelay_hold_limit_bytes 67108864"#,
            #"statsrelay_fail_open_activations_total 1"#,
            #"statsrelay_failing_open 0"#,
            #"statsrelay_workers 2"#,
            #"statsrelay_worker_counters_age_seconds{worker="1"} 0.5"#,
            #"statsrelay_log_write_errors_total 3"#,
            #"statsrelay_start_time_seconds 1699999000.0"#,
        ] {
            #expect(lines.contains(expected), "missing: \(expected)")
        }
    }

    @Test("a backend that left the pool keeps its counts in the exposition")
    func retiredBackend() {
        var counters = RelayCounters(backends: ["a:1", "b:2"])
        counters[.linesSent, backend: 1] = 9
        counters.rekey(to: ["a:1"])
        var snapshot = exampleSnapshot(backends: ["a:1"])
        snapshot.counters = counters
        let text = PrometheusExposition.render(snapshot)
        #expect(text.contains("statsrelay_backend_lines_sent_total{backend=\"b:2\"} 9\n"))
        #expect(!text.contains("statsrelay_backend_up{backend=\"b:2\"}"))
    }

    @Test("a counter family missing from the table is still exported, with a HELP line that says so")
    func undeclaredFamily() {
        let families = MetricFamily.all.filter { $0.name != "statsrelay_lines_dropped_total" }
        let text = PrometheusExposition.render(exampleSnapshot(), families: families)
        #expect(text.contains("# HELP statsrelay_lines_dropped_total The relay's counter statsrelay.lines_dropped."))
        #expect(text.contains("# TYPE statsrelay_lines_dropped_total counter\n"))
        #expect(text.contains("statsrelay_lines_dropped_total{reason=\"missing_colon\"} 7\n"))
    }

    @Test("parsing the exposition gives back every sample's labels unescaped and its value")
    func roundTrip() {
        let samples = PrometheusSample.parse(PrometheusExposition.render(exampleSnapshot()))
        let sent = samples.filter { $0.name == "statsrelay_backend_lines_sent_total" }
        #expect(sent.map(\.labels) == [["backend": "10.0.0.1:8125"], ["backend": "10.0.0.2:8125:a\"b\\c\nd"]])
        #expect(sent.map(\.value) == [20, 13])
        #expect(samples.first { $0.name == "statsrelay_backend_state_since_timestamp_seconds" }?.value == 1_700_000_000.5)
    }

    @Test("promtool check metrics accepts the exposition, escaped label values included")
    func promtoolAccepts() throws {
        let result = try promtoolCheckMetrics(PrometheusExposition.render(exampleSnapshot()))
        #expect(result.status == 0, "promtool: \(result.output)")
        #expect(result.output.isEmpty, "promtool lint findings: \(result.output)")
    }
}
