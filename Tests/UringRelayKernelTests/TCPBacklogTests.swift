@testable import RelayKernel
import Foundation
import Glibc
import Testing
@testable import UringRelay

/// A TCP listening socket that stops listening (a stop, or a reload that removes it) resets the
/// connections still in its backlog, with the bytes their clients sent and the kernel
/// acknowledged. `TCPIngest` takes them first, so they are read like every other connection.
/// Driven here without a worker, so that the connections stay in the backlog until the test
/// says: a worker takes them as soon as the kernel reports them.
@Suite("TCP ingest takes its backlog before it stops listening", .serialized, .timeLimit(.minutes(1)), .onOwnThread)
struct TCPBacklogTests {
    /// How the worker accepts: through epoll (`service`), or by a multishot accept (the io_uring
    /// driver: the listening sockets leave the epoll set; no ring here, so reads stay on epoll).
    enum Accepts: String, CaseIterable { case epoll, completions }

    @Test(
        "connections waiting in the backlog when accepting stops are accepted (counted), read to their last complete line, and closed at the stop with their half lines counted: nothing reset, nothing unread",
        arguments: Accepts.allCases, [false, true])
    func backlogTaken(accepts: Accepts, byRemoval: Bool) throws {
        let backend = try TestBackend()
        var configuration = RelayConfiguration(backends: [try BackendAddress(parsing: backend.spec)])
        configuration.threads = 1
        configuration.bindHost = "127.0.0.1"
        configuration.tcpPort = 0
        let settings = WorkerSettings(
            configuration: configuration, listeners: [], routing: RoutingState(addresses: [backend.address]),
            holdBudget: HoldBudget(totalBytes: 1 << 20, replayBytesPerSecond: 1 << 20, workers: 1))
        var core = try RelayCore(settings: settings, now: 0)
        var ingest = try TCPIngest(settings: settings, core: &core)
        if accepts == .completions { ingest.acceptByCompletions() }
        let address = try #require(ingest.boundAddresses.first)
        let label = TCPIngest.label(address)
        let id = settings.tcpListenerID(0)

        let clients = try (0..<8).map { _ in try TCPIngestClient(to: address) }
        var complete = 0
        var halves = 0
        for (index, client) in clients.enumerated() {
            let lines = (0..<50).map { "backlog.\(index).\($0):1|c\n" }.joined()
            let half = "backlog.\(index).half:1"
            try client.write(lines + half)
            complete += lines.utf8.count
            halves += half.utf8.count
        }
        for client in clients { try #require(client.waitUntilAcknowledged(seconds: 10), "the kernel took every byte") }
        #expect(ingest.openConnections == 0, "nothing accepted yet: every connection waits in the backlog")

        if byRemoval {
            ingest.remove(id: id, core: &core, now: 1)
        } else {
            ingest.stopAccepting(core: &core, now: 1)
        }
        #expect(ingest.openConnections == clients.count, "the backlog taken")
        // Read every connection's bytes (epoll reports each; bounded).
        let deadline = Date().addingTimeInterval(10)
        while core.counters[.bytesReceived, listener: label] < UInt64(complete) && Date() < deadline {
            _ = ingest.service(core: &core, now: 2)
        }
        #expect(core.counters[.bytesReceived, listener: label] == UInt64(complete))
        ingest.closeAll(core: &core, now: 3)
        let counters = core.counters
        #expect(counters[.tcpConnectionsAccepted, listener: label] == UInt64(clients.count))
        #expect(counters[.tcpConnectionsClosedStop, listener: label] == UInt64(clients.count))
        #expect(counters[.linesDroppedTCPPartial] == UInt64(clients.count))
        #expect(counters[.linesReceived, listener: label] == counters[.linesForwarded] + UInt64(clients.count), "each half line received too")
        #expect(counters[.tcpBytesDroppedPartial] == UInt64(halves))
        #expect(counters[.tcpBytesDroppedUnread] == 0)
        #expect(counters[.tcpAcceptErrors] == 0)
        for client in clients { #expect(client.waitForClose(seconds: 5)) }
    }
}
