@testable import RelayKernel
import Foundation
import Glibc
import Logging
import Testing
@testable import UringRelay

@Suite("Self-metrics (--self-metrics-interval, --prefix)", .serialized, .timeLimit(.minutes(1)), .onOwnThread)
struct SelfMetricsTests {
    /// The value of line `name:VALUE|kind` among `lines`, when there is exactly one.
    static func value(_ name: String, in lines: [String]) -> UInt64? {
        let found = lines.filter { $0.hasPrefix(name + ":") }
        guard found.count == 1 else { return nil }
        return UInt64(found[0].dropFirst(name.count + 1).prefix { $0 != "|" })
    }

    /// Every line of `received`, with the backend it arrived at.
    static func arrivals(_ received: Received) -> [(line: String, backend: Int)] {
        received.lines.enumerated().flatMap { backend, lines in lines.map { ($0, backend) } }
    }

    @Test("each report's lines reach the backend the ring routes them to, with the traffic's deltas; the next report counts the first as received",
          arguments: ioDrivers)
    func reportsRoutedWithValues(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backends = try (0..<3).map { _ in try TestBackend() }
        let subject = try InProcessRelay(backends: backends, driver: driver)
        let reporter = try SelfMetricsReporter(
            relay: subject.relay, prefix: "selftest", intervalNanoseconds: 3_600_000_000_000,
            target: subject.address, packetBytes: 1400, logger: Logger(label: "test"))
        let traffic = (0..<300).map { "app.metric.\($0):1|c" }
        try send(traffic, to: subject.address)
        _ = try collect(from: backends, expectedLines: traffic.count)
        // Lines count as sent once confirmable (200 ms after the send), and boards publish every 100 ms.
        #expect(poll(seconds: 10) { subject.relay.liveCounters().total(.linesSent) == UInt64(traffic.count) })

        let first = reporter.reportNow()
        let firstArrived = Self.arrivals(try collect(from: backends, expectedLines: first.count))
        #expect(firstArrived.map(\.line).sorted() == first.sorted())
        for (line, backend) in firstArrived {
            #expect(backend == expectedBackend(of: line, backends: 3), "\(line) at backend \(backend)")
        }
        #expect(Self.value("selftest.lines_received", in: first) == 300)
        #expect(Self.value("selftest.lines_forwarded", in: first) == 300)
        #expect(Self.value("selftest.lines_dropped", in: first) == 0)
        #expect(Self.value("selftest.backends_up", in: first) == 3)
        for (index, backend) in backends.enumerated() {
            let segment = "127_0_0_1_\(backend.address.port)"
            let routed = traffic.filter { expectedBackend(of: $0, backends: 3) == index }.count
            #expect(Self.value("selftest.backend.\(segment).lines_sent", in: first) == UInt64(routed), "backend \(index)")
            #expect(Self.value("selftest.backend.\(segment).lines_dropped", in: first) == 0)
        }

        // The first report's own lines were received and relayed like any: the second says so.
        #expect(poll(seconds: 10) { subject.relay.liveCounters().total(.linesSent) == UInt64(traffic.count + first.count) })
        let second = reporter.reportNow()
        _ = try collect(from: backends, expectedLines: second.count)
        #expect(Self.value("selftest.lines_received", in: second) == UInt64(first.count))
        #expect(Self.value("selftest.lines_forwarded", in: second) == UInt64(first.count))
        for (index, backend) in backends.enumerated() {
            let routed = first.filter { expectedBackend(of: $0, backends: 3) == index }.count
            #expect(Self.value("selftest.backend.127_0_0_1_\(backend.address.port).lines_sent", in: second) == UInt64(routed))
        }
        _ = subject.stop()
    }

    @Test("after a reload moves the relay's listener, reports go to the new one and still arrive", arguments: ioDrivers)
    func reportsFollowAMovedListener(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backends = try (0..<2).map { _ in try TestBackend() }
        let subject = try InProcessRelay(backends: backends, driver: driver)
        #expect(subject.relay.driver == driver)
        let reporter = try SelfMetricsReporter(
            relay: subject.relay, prefix: "moved", intervalNanoseconds: 3_600_000_000_000,
            target: subject.address, packetBytes: 1400, logger: Logger(label: "test"))
        let newPort = try unusedPort()
        var next = subject.relay.configurationInForce
        next.port = newPort
        let plan = try subject.relay.reload(to: next)
        #expect(plan.workersNotApplied == 0)
        #expect(subject.relay.listenAddresses.map(\.port) == [newPort])

        let report = reporter.reportNow()
        let arrived = try collect(from: backends, expectedLines: report.count)
        #expect(arrived.lines.flatMap { $0 }.sorted() == report.sorted())
        #expect(reporter.sendFailures == 0)
        _ = subject.stop()
    }

    @Test("--self-metrics-interval 200ms --prefix P: reports arrive every interval while the relay runs, routed by name", arguments: ioDrivers)
    func periodicReports(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backends = try (0..<3).map { _ in try TestBackend() }
        let relay = try RelayProcess(driver: driver, [
            "--bind", "127.0.0.1", "--port", "0", "--threads", "1", "--self-metrics-interval", "200ms", "--prefix", "periodic",
        ] + backends.map(\.spec))
        _ = try relay.listenAddress()
        // Three reports: 3 × (7 + 2 × 3) lines; bounded by collect's own 10 s.
        let linesPerReport = 7 + 2 * backends.count
        let received = try collect(from: backends, expectedLines: 3 * linesPerReport, seconds: 10)
        relay.signal(SIGTERM)
        #expect(relay.waitForExit(seconds: 15) == 0)
        let arrived = Self.arrivals(received)
        let reports = arrived.filter { $0.line.hasPrefix("periodic.backends_up:") }
        #expect(reports.count >= 3)
        #expect(reports.allSatisfy { $0.line == "periodic.backends_up:3|g" })
        #expect(arrived.allSatisfy { $0.line.hasPrefix("periodic.") })
        for (line, backend) in arrived {
            #expect(backend == expectedBackend(of: line, backends: 3), "\(line) at backend \(backend)")
        }
        #expect(relay.standardError.contains("self-metrics: the relay's counters go to its own listener"))
    }
}
