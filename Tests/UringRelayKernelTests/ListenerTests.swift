@testable import RelayKernel
import Foundation
import Glibc
import Testing
@testable import UringRelay

/// Several UDP listeners: every worker opens one `SO_REUSEPORT` socket on each, what arrives on
/// any is relayed like the rest, and what each received is counted under its own `listener`
/// label.
@Suite("UDP listeners", .serialized, .timeLimit(.minutes(1)), .onOwnThread)
struct ListenerTests {
    @Test("two listeners, two workers: every line sent to either arrives once at the backend the reference routing names, and each listener's datagrams, bytes and lines are counted apart, on /metrics too", arguments: ioDrivers)
    func twoListeners(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backends = try (0..<2).map { _ in try TestBackend() }
        let relay = try InProcessRelay(backends: backends, driver: driver) { configuration in
            configuration.threads = 2
            let cpu = nextTestCPU()
            configuration.cpus = [cpu, cpu]
            configuration.additionalListeners = [SocketAddress(numericHost: "127.0.0.1", port: 0)!]
        }
        #expect(relay.relay.driver == driver)
        let listeners = relay.relay.listenAddresses
        try #require(listeners.count == 2)
        #expect(listeners[0].port != 0 && listeners[1].port != 0 && listeners[0] != listeners[1], "\(listeners)")

        // Listener 0: 30 datagrams of 2 lines; listener 1: 20 datagrams of 3 lines.
        let first = (0..<30).map { "first.\($0):1|c\nfirst.\($0).b:2|g" }
        let second = (0..<20).map { "second.\($0):1|c\nsecond.\($0).b:2|ms\nsecond.\($0).c:3|c" }
        try send(first, to: listeners[0])
        try send(second, to: listeners[1])
        let sent = (first + second).flatMap { $0.split(separator: "\n").map(String.init) }
        let received = try collect(from: backends, expectedLines: sent.count)
        #expect(received.totalLines == sent.count)
        for (index, lines) in received.lines.enumerated() {
            let expected = sent.filter { expectedBackend(of: $0, backends: 2) == index }
            #expect(lines.sorted() == expected.sorted(), "backend \(index)")
        }

        let labels = listeners.map { "udp:\($0)" }
        let counters = relay.stop()
        #expect(counters.listeners.sorted() == labels.sorted())
        #expect(counters[.datagramsReceived, listener: labels[0]] == 30)
        #expect(counters[.linesReceived, listener: labels[0]] == 60)
        #expect(counters[.bytesReceived, listener: labels[0]] == UInt64(first.reduce(0) { $0 + $1.utf8.count }))
        #expect(counters[.datagramsReceived, listener: labels[1]] == 20)
        #expect(counters[.linesReceived, listener: labels[1]] == 60)
        #expect(counters[.bytesReceived, listener: labels[1]] == UInt64(second.reduce(0) { $0 + $1.utf8.count }))
        #expect(counters[.datagramsReceived] == 50)

        let metrics = PrometheusExposition.render(relay.relay.snapshot(version: "test", startTimeUnixSeconds: 0))
        #expect(metrics.contains("statsrelay_datagrams_received_total{listener=\"\(labels[0])\"} 30\n"), "\(metrics)")
        #expect(metrics.contains("statsrelay_datagrams_received_total{listener=\"\(labels[1])\"} 20\n"))
        #expect(metrics.contains("statsrelay_lines_received_total{listener=\"\(labels[1])\"} 60\n"))
    }

    @Test("a backend that is the relay's second listener is refused at start (it would loop every line back)")
    func selfLoopSecondListener() throws {
        let probe = try UDPSocket.bound(to: SocketAddress(numericHost: "127.0.0.1", port: 0)!)
        let port = probe.localAddress.port
        let backend = try TestBackend()
        var configuration = RelayConfiguration(backends: [
            try BackendAddress(parsing: backend.spec), try BackendAddress(parsing: "127.0.0.1:\(port)"),
        ])
        configuration.bindHost = "127.0.0.1"
        configuration.port = 0
        configuration.additionalListeners = [SocketAddress(numericHost: "0.0.0.0", port: port)!]
        #expect(throws: ConfigurationError.self) {
            _ = try Relay(configuration: configuration, addresses: [backend.address, SocketAddress(numericHost: "127.0.0.1", port: port)!], logger: .init(label: "test"))
        }
    }
}
