import Testing
@testable import UringRelay

@Suite("Self-metrics lines")
struct SelfMetricsLinesTests {
    @Test("counters are deltas since the last report (from zero at the first), gauges are values; drops of every reason are summed")
    func deltasAndGauges() {
        var before = RelayCounters(backends: ["10.0.0.1:8125:a", "[::1]:9000"])
        before[.linesReceived] = 100
        before[.linesForwarded] = 90
        before[.linesDroppedMissingColon] = 4
        before[.linesSent, backend: 0] = 50
        var after = before
        after[.linesReceived] = 160
        after[.linesForwarded] = 140
        after[.linesDroppedTooLong] = 3
        after[.linesSent, backend: 0] = 80
        after[.linesSent, backend: 1] = 7
        after[.linesDroppedBackendDown, backend: 1] = 2
        let first = SelfMetricsReporter.lines(prefix: "p", previous: nil, current: before, backendsUp: 2, holdInUseBytes: 0)
        #expect(first.contains("p.lines_received:100|c"))
        #expect(first.contains("p.lines_dropped:4|c"))
        let second = SelfMetricsReporter.lines(prefix: "p", previous: before, current: after, backendsUp: 1, holdInUseBytes: 4096)
        #expect(second == [
            "p.datagrams_received:0|c", "p.lines_received:60|c", "p.lines_forwarded:50|c", "p.lines_dropped:5|c",
            "p.datagrams_dropped_kernel:0|c",
            "p.backend.10_0_0_1_8125_a.lines_sent:30|c", "p.backend.10_0_0_1_8125_a.lines_dropped:0|c",
            "p.backend.___1__9000.lines_sent:7|c", "p.backend.___1__9000.lines_dropped:2|c",
            "p.backends_up:1|g", "p.hold_in_use_bytes:4096|g",
        ])
    }

    @Test("lines are packed into datagrams of at most the packet length, whole lines only")
    func packing() {
        let lines = (0..<50).map { "statsrelay.metric_number_\($0):12345|c" }
        let datagrams = SelfMetricsReporter.datagrams(lines, packetBytes: 200)
        #expect(datagrams.allSatisfy { $0.count <= 200 && $0.last == UInt8(ascii: "\n") })
        #expect(datagrams.flatMap { String(decoding: $0, as: UTF8.self).split(separator: "\n").map(String.init) } == lines)
    }

    @Test("a prefix that would break a metric name is refused", arguments: ["", "a:b", "a|b", "a b", "a\nb", ".a", "a.", "a@b"])
    func badPrefix(prefix: String) {
        #expect(RelayConfiguration.prefixProblem(prefix) != nil)
    }

    @Test("a dotted prefix is fine", arguments: ["statsrelay", "infra.statsrelay.host-1", "a_b"])
    func goodPrefix(prefix: String) {
        #expect(RelayConfiguration.prefixProblem(prefix) == nil)
    }
}
