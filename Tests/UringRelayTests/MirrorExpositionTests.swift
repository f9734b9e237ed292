import Testing
@testable import UringRelay

/// The mirror pool's families of `/metrics`: apart from the primary's, every one declared.
@Suite("Mirror counters on /metrics")
struct MirrorExpositionTests {
    static func snapshot() -> RelaySnapshot {
        var snapshot = exampleSnapshot()
        snapshot.counters[.mirrorLines] = 30
        snapshot.counters[.mirrorLinesDroppedNoSendBuffer] = 4
        snapshot.counters[.mirrorLinesDroppedRefused] = 6
        snapshot.counters[.mirrorLinesSent] = 20
        snapshot.counters[.mirrorPacketsSent] = 2
        return snapshot
    }

    @Test("mirror counters come out under statsrelay_mirror_*, drops by reason, never under a backend label or in the primary's families")
    func families() {
        let text = PrometheusExposition.render(Self.snapshot())
        let lines = text.split(separator: "\n").map(String.init)
        #expect(lines.contains("statsrelay_mirror_lines_mirrored_total 30"))
        #expect(lines.contains("statsrelay_mirror_lines_dropped_total{reason=\"no_send_buffer\"} 4"))
        #expect(lines.contains("statsrelay_mirror_lines_dropped_total{reason=\"refused\"} 6"))
        #expect(lines.contains("statsrelay_mirror_lines_sent_total 20"))
        #expect(lines.contains("statsrelay_mirror_packets_sent_total 2"))
        #expect(lines.contains("# TYPE statsrelay_mirror_lines_dropped_total counter"))
        // The primary's totals are untouched by the mirror's.
        #expect(!lines.contains { $0.hasPrefix("statsrelay_lines_dropped_total{") && $0.contains("reason=\"refused\"") && !$0.hasSuffix(" 5") })
        #expect(!text.contains("backend=\"mirror/"))
        #expect(PrometheusExposition.undeclaredCounterFamilies(declared: MetricFamily.all).isEmpty)
    }

    @Test("the exposition with mirror counters passes promtool check metrics")
    func promtoolAccepts() throws {
        let result = try promtoolCheckMetrics(PrometheusExposition.render(Self.snapshot()))
        #expect(result.status == 0, "\(result.output)")
    }
}
