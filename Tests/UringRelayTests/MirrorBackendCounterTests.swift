import Testing
@testable import UringRelay

/// The mirror pool's per-backend counters (`statsrelay.mirror.backend.*`,
/// `statsrelay_mirror_backend_*{backend}` on `/metrics`): counted by mirror backend, summed
/// over workers by name, exported under a `backend` label of their own families.
@Suite("Per-mirror-backend counters")
struct MirrorBackendCounterTests {
    static let mirrors = ["10.0.2.1:8125", "mirror.example:8125"]

    /// A worker's counters with the two mirror backends counted.
    static func counters() -> RelayCounters {
        var counters = RelayCounters(backends: ["10.0.1.1:8125"])
        counters.countMirrorBackends(mirrors)
        counters[.linesSent, mirror: 0] = 7
        counters[.packetsSent, mirror: 0] = 2
        counters[.bytesSent, mirror: 0] = 140
        counters[.linesDroppedRefused, mirror: 1] = 5
        counters[.linesDroppedTCPQueueFull, mirror: 1] = 3
        return counters
    }

    @Test("a delivery report of a mirror backend lands on that backend by its mirror/ identity; an unknown one on none")
    func addsByIdentity() {
        var counters = Self.counters()
        counters.add(4, to: .linesSent, mirrorIdentity: "mirror/mirror.example:8125")
        counters.add(9, to: .linesSent, mirrorIdentity: "mirror/10.9.9.9:1")
        #expect(counters[.linesSent, mirror: "mirror.example:8125"] == 4)
        #expect(counters[.linesSent, mirror: "10.0.2.1:8125"] == 7)
        #expect(counters[.linesSent, mirror: "10.9.9.9:1"] == 0)
        #expect(counters.countedBackends == ["10.0.1.1:8125"], "a mirror backend is never a primary one")
    }

    @Test("workers' counters add up by mirror backend name")
    func sumsOverWorkers() {
        var total = RelayCounters(backends: ["10.0.1.1:8125"])
        total += Self.counters()
        total += Self.counters()
        #expect(total.mirrorBackends == Self.mirrors)
        #expect(total[.linesSent, mirror: "10.0.2.1:8125"] == 14)
        #expect(total[.linesDroppedRefused, mirror: "mirror.example:8125"] == 10)
        #expect(total[.linesDroppedTCPQueueFull, mirror: "mirror.example:8125"] == 6)
    }

    @Test("/metrics: one sample per mirror backend under statsrelay_mirror_backend_*, drops by reason; the pool-wide families and the primary's per-backend ones untouched")
    func exposition() {
        var snapshot = exampleSnapshot()
        snapshot.counters += Self.counters()
        let lines = PrometheusExposition.render(snapshot).split(separator: "\n").map(String.init)
        #expect(lines.contains("statsrelay_mirror_backend_lines_sent_total{backend=\"10.0.2.1:8125\"} 7"))
        #expect(lines.contains("statsrelay_mirror_backend_lines_sent_total{backend=\"mirror.example:8125\"} 0"))
        #expect(lines.contains("statsrelay_mirror_backend_packets_sent_total{backend=\"10.0.2.1:8125\"} 2"))
        #expect(lines.contains("statsrelay_mirror_backend_bytes_sent_total{backend=\"10.0.2.1:8125\"} 140"))
        #expect(lines.contains("statsrelay_mirror_backend_lines_dropped_total{backend=\"mirror.example:8125\",reason=\"refused\"} 5"))
        #expect(lines.contains("statsrelay_mirror_backend_lines_dropped_total{backend=\"mirror.example:8125\",reason=\"tcp_queue_full\"} 3"))
        #expect(lines.contains("# TYPE statsrelay_mirror_backend_lines_dropped_total counter"))
        #expect(!lines.contains { $0.hasPrefix("statsrelay_backend_") && $0.contains("mirror.example") })
        #expect(PrometheusExposition.undeclaredCounterFamilies(declared: MetricFamily.all).isEmpty)
        let reasons = Set(MirrorBackendCounter.allCases.compactMap(\.exposition.reason))
        #expect(reasons == ["no_send_buffer", "send_error", "refused", "unreachable", "unsent_at_exit", "tcp_queue_full", "tcp_unsent_at_exit"])
    }

    @Test("the exposition with per-mirror-backend counters passes promtool check metrics")
    func promtoolAccepts() throws {
        var snapshot = exampleSnapshot()
        snapshot.counters += Self.counters()
        let result = try promtoolCheckMetrics(PrometheusExposition.render(snapshot))
        #expect(result.status == 0, "\(result.output)")
    }

    @Test("each per-mirror-backend counter splits the pool-wide mirror counter of the same meaning")
    func totals() {
        for counter in MirrorBackendCounter.allCases {
            #expect(counter.name.replacing("statsrelay.mirror.backend.", with: "statsrelay.mirror.") == counter.total.name)
        }
    }
}
