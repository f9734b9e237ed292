@testable import RelayKernel
import Foundation
import Glibc
import Testing
@testable import UringRelay

@Suite("Kernel drops are counted per listener", .serialized, .timeLimit(.minutes(1)), .onOwnThread)
struct KernelDropPerListenerTests {
    @Test("a stopped relay with two listeners, one flooded: /metrics counts the kernel's drops under that listener's label, none under the other, and they sum to the exit report's total", arguments: ioDrivers)
    func dropsSplitByListener(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        // Two ports known before the relay binds them.
        let ports = try (0..<2).map { _ in try unusedPort() }
        let addresses = ports.map { SocketAddress(numericHost: "127.0.0.1", port: $0)! }
        let labels = addresses.map { "udp:\($0)" }
        let relay = try RelayProcess(driver: driver, [
            "--listen", addresses[0].description, "--listen", addresses[1].description, "--threads", "1", "--rcvbuf", "16K",
            "--admin", "127.0.0.1:0", backend.spec,
        ])
        _ = try relay.listenAddress()
        let admin = try adminAddress(of: relay)
        try #require(relay.suspend(), "the relay did not stop")
        // A stopped worker takes nothing: a 16 KiB socket buffer holds a few dozen of these.
        let quiet = (0..<10).map { "quiet.\($0):1|c" }
        let flood = (0..<2_000).map { "flood.\($0):1|c" }
        try send(quiet, to: addresses[0])
        try send(flood, to: addresses[1])
        relay.signal(SIGCONT)

        func kernelDrops(_ samples: [PrometheusSample], _ label: String) -> Double? {
            value(samples, "statsrelay_datagrams_dropped_total", ["listener": label, "reason": "kernel"])
        }
        func received(_ samples: [PrometheusSample], _ label: String) -> Double? {
            value(samples, "statsrelay_datagrams_received_total", ["listener": label])
        }
        // Counters are published every 100 ms and the drops read as often: scrape until every
        // datagram sent to each listener is received or dropped there.
        let scraped = try scrape(admin, until: { samples in
            received(samples, labels[0]) == Double(quiet.count)
                && (received(samples, labels[1]) ?? 0) + (kernelDrops(samples, labels[1]) ?? 0) == Double(flood.count)
        })
        let samples = scraped.samples
        #expect(received(samples, labels[0]) == Double(quiet.count), "\(scraped.text)")
        #expect(kernelDrops(samples, labels[0]) == 0, "\(scraped.text)")
        let floodDrops = try #require(kernelDrops(samples, labels[1]), "\(scraped.text)")
        #expect(floodDrops > 0)
        #expect((received(samples, labels[1]) ?? 0) + floodDrops == Double(flood.count))
        #expect(samples.filter { $0.name == "statsrelay_datagrams_dropped_total" && $0.labels["reason"] == "kernel" }.count == 2)

        relay.signal(SIGTERM)
        #expect(relay.waitForExit() == 0)
        #expect(relay.counter("statsrelay.datagrams_dropped.kernel") == UInt64(floodDrops))
    }
}
