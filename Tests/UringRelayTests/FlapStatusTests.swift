import Testing
@testable import UringRelay

@Suite("Flap damping in /metrics and status")
struct FlapStatusTests {
    @Test("statsrelay_backend_flap_holds_total carries each backend's holds; status marks a down backend that flapped")
    func exposedAndShown() {
        var snapshot = exampleSnapshot(backends: ["10.0.0.1:8125", "10.0.0.2:8125"])
        snapshot.backends[1].flapHolds = 3  // backend 1 is down in the example
        let samples = PrometheusSample.parse(PrometheusExposition.render(snapshot))
        let holds = samples.filter { $0.name == "statsrelay_backend_flap_holds_total" }
        #expect(holds.map { $0.labels["backend"] ?? "" } == ["10.0.0.1:8125", "10.0.0.2:8125"])
        #expect(holds.map(\.value) == [0, 3])
        let report = StatusReport(
            samples: samples, earlier: nil, interval: 2, health: (true, "ok"), address: "127.0.0.1:8127", unixNow: 1_700_003_725.5)
        let rows = report.render().split(separator: "\n")
        #expect(rows.contains { $0.hasPrefix("10.0.0.2:8125") && $0.contains("DOWN (flapping: 3 holds)") })
        #expect(rows.contains { $0.hasPrefix("10.0.0.1:8125") && $0.contains(" up ") })
    }
}
