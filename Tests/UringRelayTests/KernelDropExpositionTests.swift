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

    @Test("reason=\"kernel\" has one sample per listener with its own count; the other reasons one sample without a listener label")
    func kernelDropsSplit() throws {
        let text = PrometheusExposition.render(Self.snapshot())
        let dropped = text.split(separator: "\n").filter { $0.hasPrefix("statsrelay_datagrams_dropped_total{") }
        #expect(dropped.contains("statsrelay_datagrams_dropped_total{listener=\"udp:127.0.0.1:8125\",reason=\"kernel\"} 3"), "\(dropped)")
        #expect(dropped.contains("statsrelay_datagrams_dropped_total{listener=\"udp:127.0.0.1:8126\",reason=\"kernel\"} 40"), "\(dropped)")
        #expect(dropped.filter { $0.contains("reason=\"kernel\"") }.count == 2)
        #expect(dropped.contains("statsrelay_datagrams_dropped_total{reason=\"truncated\"} 2"), "\(dropped)")
        #expect(dropped.filter { $0.contains("reason=\"truncated\"") }.count == 1)
    }

    @Test("a reload adding a listener keeps the series of the drop reasons not split by listener", arguments: ["truncated", "bad_receive_header", "at_exit"])
    func unsplitReasonsStableAcrossReload(reason: String) throws {
        var before = Self.snapshot()
        before.listeners = ["udp:127.0.0.1:8125"]
        var after = Self.snapshot()
        after.listeners = ["udp:127.0.0.1:8125", "udp:127.0.0.1:8126", "tcp:127.0.0.1:8125"]
        /// The series (name and labels, not the value) of `reason`'s drops.
        func series(_ snapshot: RelaySnapshot) -> [String] {
            PrometheusExposition.render(snapshot).split(separator: "\n")
                .filter { $0.hasPrefix("statsrelay_datagrams_dropped_total{") && $0.contains("reason=\"\(reason)\"") }
                .map { String($0.split(separator: " ")[0]) }
        }
        #expect(series(before) == ["statsrelay_datagrams_dropped_total{reason=\"\(reason)\"}"])
        #expect(series(after) == series(before))
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
