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

    @Test("before any worker counts by listener, each listener family shows a zero series per listener it counts: TCP families only under tcp: listeners, none on a UDP-only relay, no joined label")
    func listenersNotYetCounted() {
        var snapshot = exampleSnapshot()
        snapshot.counters = RelayCounters(backends: ["10.0.0.1:8125", "10.0.0.2:8125"])
        snapshot.listeners = ["udp:127.0.0.1:8125", "unixgram:/run/s.sock", "tcp:127.0.0.1:8126"]
        let samples = PrometheusSample.parse(PrometheusExposition.render(snapshot))
        func listeners(of family: String, reason: String? = nil) -> [String] {
            samples.filter { $0.name == family && $0.labels["reason"] == reason }.compactMap { $0.labels["listener"] }
        }
        #expect(listeners(of: "statsrelay_datagrams_received_total") == snapshot.listeners)
        #expect(listeners(of: "statsrelay_tcp_connections_accepted_total") == ["tcp:127.0.0.1:8126"])
        #expect(listeners(of: "statsrelay_tcp_connections_closed_total", reason: "peer") == ["tcp:127.0.0.1:8126"])
        let labelled = samples.filter { $0.labels["listener"] != nil }
        #expect(!labelled.contains { ($0.labels["listener"] ?? "").contains(",") })
        #expect(labelled.allSatisfy { $0.value == 0 })

        snapshot.listeners = ["udp:127.0.0.1:8125"]
        let udpOnly = PrometheusSample.parse(PrometheusExposition.render(snapshot))
        #expect(udpOnly.filter { $0.name.hasPrefix("statsrelay_tcp_connections_") }.isEmpty)
        #expect(udpOnly.filter { $0.name == "statsrelay_datagrams_received_total" }.map(\.labels) == [["listener": "udp:127.0.0.1:8125"]])
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

/// The exposition as `PrometheusExposition.render` wrote it before its counter families were
/// precomputed: each counter's family found by splitting its dot name, each backend's count
/// looked up by identity (and, as since, no `listener` label on drop reasons not split by
/// listener). The reference the faster rendering must match byte for byte.
private func referenceExposition(_ snapshot: RelaySnapshot) -> String {
    let families = MetricFamily.all + PrometheusExposition.undeclaredCounterFamilies(declared: MetricFamily.all)
    var text = ""
    for family in families {
        func labels(_ values: [String: String]) -> [(name: String, value: String)] {
            family.labels.compactMap { name in values[name].map { (name, $0) } }
        }
        var samples: [PrometheusExposition.Sample] = []
        switch family.source {
        case .relayCounters:
            let listener = snapshot.listeners.count == 1 ? snapshot.listeners[0] : snapshot.listeners.joined(separator: ",")
            for counter in RelayCounter.allCases {
                let (name, reason) = MetricFamily.exposition(ofCounterNamed: counter.name)
                guard name == family.name else { continue }
                var values: [String: String] = [:]
                if let reason { values["reason"] = reason }
                if let split = ListenerCounter.split(of: counter), !snapshot.counters.listeners.isEmpty {
                    for name in snapshot.counters.listeners where !split.isTCP || name.hasPrefix("tcp:") {
                        values["listener"] = name
                        samples.append(.init(labels: labels(values), value: "\(snapshot.counters[split, listener: name])"))
                    }
                } else {
                    if ListenerCounter.split(of: counter) != nil { values["listener"] = listener }
                    samples.append(.init(labels: labels(values), value: "\(snapshot.counters[counter])"))
                }
            }
        case .backendCounters:
            for backend in snapshot.counters.countedBackends {
                for counter in BackendCounter.allCases {
                    let (name, reason) = MetricFamily.exposition(ofCounterNamed: counter.name)
                    guard name == family.name else { continue }
                    var values = ["backend": backend]
                    if let reason { values["reason"] = reason }
                    samples.append(.init(labels: labels(values), value: "\(snapshot.counters[counter, backend: backend])"))
                }
            }
        case .mirrorBackendCounters:
            for backend in snapshot.counters.mirrorBackends {
                for counter in MirrorBackendCounter.allCases {
                    let (name, reason) = MetricFamily.exposition(ofCounterNamed: counter.name)
                    guard name == family.name else { continue }
                    var values = ["backend": backend]
                    if let reason { values["reason"] = reason }
                    samples.append(.init(labels: labels(values), value: "\(snapshot.counters[counter, mirror: backend])"))
                }
            }
        default:
            samples = PrometheusExposition.samples(of: family, in: snapshot)
        }
        text += "# HELP \(family.name) \(PrometheusExposition.escapeHelp(family.help))\n"
        text += "# TYPE \(family.name) \(family.kind.rawValue)\n"
        for sample in samples {
            text += family.name
            if !sample.labels.isEmpty {
                text += "{" + sample.labels.map { "\($0.name)=\"\(PrometheusExposition.escapeLabelValue($0.value))\"" }.joined(separator: ",") + "}"
            }
            text += " \(sample.value)\n"
        }
    }
    return text
}

@Suite("The exposition of a relay with many backends")
struct ManyBackendExpositionTests {
    /// 301 backends in the pool (one with every character the format escapes), 40 that left it
    /// and still have counts, 3 listeners (one TCP) and 2 mirror backends, every count distinct.
    static func manyBackendSnapshot() -> RelaySnapshot {
        let left = (0..<40).map { "10.1.0.\($0):8125" }
        let current = (0..<300).map { "10.0.\($0 / 200).\($0 % 200):8125" } + ["10.9.9.9:8125:a\"b\\c\nd"]
        var counters = RelayCounters(backends: left + current.dropLast(60))
        for index in counters.backends.indices {
            for counter in BackendCounter.allCases { counters[counter, backend: index] = UInt64(index * 1_000 + counter.rawValue + 1) }
        }
        counters.rekey(to: current)
        for index in counters.backends.indices where index % 3 == 0 {
            counters[.linesSent, backend: index] &+= 7
        }
        for counter in RelayCounter.allCases where counter.backendColumn == nil { counters[counter] = UInt64(counter.rawValue * 3 + 1) }
        for name in ["udp:127.0.0.1:8125", "udp:127.0.0.1:8126", "tcp:127.0.0.1:8125"] {
            let index = counters.countListener(name)
            for counter in ListenerCounter.allCases { counters[counter, listener: index] = UInt64(index * 100 + counter.rawValue + 1) }
        }
        counters.countMirrorBackends(["10.5.0.1:8125", "10.5.0.2:8125"])
        for index in 0..<2 {
            for counter in MirrorBackendCounter.allCases { counters[counter, mirror: index] = UInt64(index * 50 + counter.rawValue + 1) }
        }
        return RelaySnapshot(
            counters: counters,
            backends: current.enumerated().map { index, identity in
                .init(identity: identity, up: index % 4 != 0, stateChanges: index, stateSinceUnixSeconds: 1_700_000_000.5 + Double(index))
            },
            listeners: counters.listeners, ioDriver: "uring", version: "9.8.7", hashMode: "jump",
            ringFingerprint: "0123456789abcdef", holdInUseBytes: 65_536, holdLimitBytes: 1 << 26, failOpenActivations: 1,
            failingOpen: false, workerCounterAgesSeconds: [0.25, 0.5], logWriteErrors: 3, startTimeUnixSeconds: 1_699_999_000)
    }

    @Test("byte for byte what the per-sample lookup rendered, and promtool accepts it")
    func matchesReference() throws {
        let snapshot = Self.manyBackendSnapshot()
        #expect(snapshot.counters.countedBackends.count == 341)
        let rendered = PrometheusExposition.render(snapshot)
        let reference = referenceExposition(snapshot)
        #expect(rendered == reference)
        if rendered != reference {
            let (ours, theirs) = (rendered.split(separator: "\n"), reference.split(separator: "\n"))
            let first = zip(ours, theirs).enumerated().first { $0.element.0 != $0.element.1 }?.offset ?? min(ours.count, theirs.count)
            Issue.record("first difference at line \(first + 1): \(first < ours.count ? ours[first] : "<end>") vs \(first < theirs.count ? theirs[first] : "<end>")")
        }
        let result = try promtoolCheckMetrics(rendered)
        #expect(result.status == 0, "promtool: \(result.output)")
    }
}
