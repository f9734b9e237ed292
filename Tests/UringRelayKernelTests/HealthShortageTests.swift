@testable import RelayKernel
import Foundation
import Glibc
import RoutingReference
import Testing
@testable import UringRelay

/// A health check that cannot run on this host (no descriptor left for its socket) says
/// nothing about the backend: counted as a failure, a relay whose open-files limit its clients
/// had used up marked every backend down and failed open (a review's finding, through idle
/// admin connections).
@Suite("health checks without a verdict", .serialized, .timeLimit(.minutes(1)), .onOwnThread)
struct HealthShortageTests {
    @Test("TCP clients use up the open-files limit: the health checks cannot open a socket, the backends keep their state and their lines, and the checks run again once the clients go", arguments: ioDrivers)
    func descriptorsUsedUp(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let (backends, twins) = try backendsWithHealthTwins(2)
        let tcpPort = try TestPorts.take()
        // 64 descriptors in all, soft and hard: the relay needs about 20 without its TCP
        // connections (admin off), so some 40 clients use up the rest.
        let relay = try DefaultSignalRelay(driver: driver, [
            "--bind", "127.0.0.1", "--port", "0", "--threads", "1", "--tcp-port", "\(tcpPort)", "--tcp-max-connections", "200",
            "--health-check", "tcp", "--health-interval", "100ms", "--health-timeout", "100ms", "--health-fall", "2",
        ] + backends.map(\.spec), launcher: openFilesLimit(64))
        // "listening on 127.0.0.1:P, tcp:127.0.0.1:T": the UDP listener is the first.
        _ = try relay.listenAddress()
        let listening = try #require(relay.standardError.firstMatch(of: /listening on 127\.0\.0\.1:(\d+),/).flatMap { UInt16($0.1) })
        let address = SocketAddress(numericHost: "127.0.0.1", port: listening)!
        let tcp = SocketAddress(numericHost: "127.0.0.1", port: tcpPort)!
        var clients: [TCPIngestClient] = []
        for _ in 0..<80 {
            // Connections beyond the relay's descriptors wait in its listen queue, accepted by
            // the kernel: they still connect.
            guard let client = try? TCPIngestClient(to: tcp) else { break }
            clients.append(client)
        }
        #expect(clients.count >= 50, "\(clients.count) clients connected")
        #expect(relay.waitForLog("health checks could not run on this host", seconds: 10), "\(relay.standardError)")
        let shortage = try #require(relay.standardError.split(separator: "\n").first { $0.contains("health checks could not run") })
        #expect(shortage.contains("Too many open files"), "\(shortage)")
        // Several rounds (fall is 2, every 100 ms) with no verdict: no backend went down.
        let lines = (0..<100).map { "shortage.\($0):1|c" }
        try send(lines, to: address)
        let received = try collect(from: backends, expectedLines: lines.count, seconds: 5)
        let expected = lines.map { ReferenceRouting.jump(ReferenceRouting.fnv1a64(Array($0.prefix { $0 != ":" }.utf8)), 2) }
        for (index, line) in lines.enumerated() {
            #expect(received.lines[expected[index]].contains(line), "\(line) not at backend \(expected[index])")
        }
        // No event says a round passed without a verdict: ten rounds' time must show no change
        // (without the fix the first two rounds marked the backends down).
        #expect(!relay.waitForLog("] backend down", seconds: 1), "\(relay.standardError)")
        #expect(!relay.standardError.contains("failing open"), "\(relay.standardError)")

        clients.removeAll()
        #expect(relay.waitForLog("health checks run again", seconds: 10), "\(relay.standardError)")
        relay.signal(SIGTERM)
        #expect(relay.waitForExit() == 0, "\(relay.standardError)")
        #expect(!relay.standardError.contains("] backend down"), "\(relay.standardError)")
        _ = twins
    }
}
