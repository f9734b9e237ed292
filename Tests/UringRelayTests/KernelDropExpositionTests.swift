import Testing
@testable import UringRelay

@Suite("Kernel drops per listener in the exposition")
struct KernelDropExpositionTests {
    /// Two listeners' counts: the first received 12 datagrams and had 3 dropped by the kernel,
    /// the second received 5 and had 40 dropped; 2 datagrams truncated (not split by listener).
    static func snapshot() -> RelaySnapshot {
        var counters = RelayCounters(backends: ["10.0.0.1:8125"])
        let first = counters.countListener("udp:127.0.0.1:8125")
        let second = counters.countListener("udp:127.0.0.1:8126")
        counters[.datagramsReceived, listener: first] = 12
        counters[.datagramsReceived, listener: second] = 5
        counters[.datagramsReceived] = 17
        counters[.datagramsDroppedKernel, listener: first] = 3
        counters[.datagramsDroppedKernel, listener: second] = 40
        counters[.datagramsDroppedKernel] = 43
        counters[.datagramsTruncated] = 2
        var snapshot = exampleSnapshot(backends: ["10.0.0.1:8125"])
        snapshot.counters = counters
        snapshot.listeners = ["udp:127.0.0.1:8125", "udp:127.0.0.1:8126"]
        return snapshot
    }

    @Test("reason=\"kernel\" has one sample per listener with its own count; the other reasons keep one sample labelled with every listener")
    func kernelDropsSplit() throws {
        let text = PrometheusExposition.render(Self.snapshot())
        let dropped = text.split(separator: "\n").filter { $0.hasPrefix("statsrelay_datagrams_dropped_total{") }
        #expect(dropped.contains("statsrelay_datagrams_dropped_total{listener=\"udp:127.0.0.1:8125\",reason=\"kernel\"} 3"), "\(dropped)")
        #expect(dropped.contains("statsrelay_datagrams_dropped_total{listener=\"udp:127.0.0.1:8126\",reason=\"kernel\"} 40"), "\(dropped)")
        #expect(dropped.filter { $0.contains("reason=\"kernel\"") }.count == 2)
        #expect(dropped.contains("statsrelay_datagrams_dropped_total{listener=\"udp:127.0.0.1:8125,udp:127.0.0.1:8126\",reason=\"truncated\"} 2"), "\(dropped)")
    }

    @Test("the exposition with kernel drops split by listener passes promtool check metrics")
    func promtoolAccepts() throws {
        let result = try promtoolCheckMetrics(PrometheusExposition.render(Self.snapshot()))
        #expect(result.status == 0, "\(result.output)")
    }

    @Test("summing workers' counters adds kernel drops listener by listener")
    func workersSum() {
        var one = RelayCounters(backends: [])
        one[.datagramsDroppedKernel, listener: one.countListener("udp:127.0.0.1:8125")] = 3
        var other = RelayCounters(backends: [])
        other[.datagramsDroppedKernel, listener: other.countListener("udp:127.0.0.1:8126")] = 7
        other[.datagramsDroppedKernel, listener: other.countListener("udp:127.0.0.1:8125")] = 4
        one += other
        #expect(one[.datagramsDroppedKernel, listener: "udp:127.0.0.1:8125"] == 7)
        #expect(one[.datagramsDroppedKernel, listener: "udp:127.0.0.1:8126"] == 7)
    }
}
