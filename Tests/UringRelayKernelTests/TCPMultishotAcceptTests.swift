import Dispatch
import Foundation
import Glibc
import Synchronization
@testable import RelayKernel
import Testing
@testable import UringRelay

/// Whether TCP `address`'s port can be bound again by a socket without `SO_REUSEADDR` or
/// `SO_REUSEPORT`, tried until `seconds` pass: only when no socket holds the port any more (a
/// listening socket whose descriptor an armed io_uring accept still holds keeps it bound).
private func portFree(_ address: SocketAddress, seconds: Double) -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    repeat {
        let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else { return false }
        let result = address.withUnsafeSockaddr { pointer, length in bind(descriptor, pointer, length) }
        Glibc.close(descriptor)
        if result == 0 { return true }
        usleep(5_000)
    } while Date() < deadline
    return false
}

/// A flag one thread sets and another reads.
private final class StopFlag: Sendable {
    private let value = Atomic(false)
    var isSet: Bool { value.load(ordering: .acquiring) }
    func set() { value.store(true, ordering: .releasing) }
}

/// TCP ingest's accepts on the io_uring driver: a multishot accept armed on each listening
/// socket (the portable driver accepts through epoll; both must behave the same to a client).
@Suite("TCP multishot accept", .serialized, .timeLimit(.minutes(1)), .onOwnThread)
struct TCPMultishotAcceptTests {
    @Test("300 connections opened at once: every one accepted and counted, every line relayed once", arguments: ioDrivers)
    func burst(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let limit = raiseOpenFileLimit()
        try #require(limit >= 1_000, "RLIMIT_NOFILE hard limit \(limit) is too low for 300 connections")
        let backend = try TestBackend()
        let relay = try InProcessRelay(backends: [backend], driver: driver) { $0.tcpPort = 0 }
        let tcp = try #require(relay.relay.tcpListenAddresses.first)
        let count = 300
        // Every connect completes in the backlog before the relay takes any: one burst.
        let clients = try (0..<count).map { _ in try TCPIngestClient(to: tcp) }
        for (index, client) in clients.enumerated() { try client.write("burst.\(index):1|c\n") }
        let expected = (0..<count).map { "burst.\($0):1|c" }
        let received = try collect(from: [backend], expectedLines: count, seconds: 10)
        #expect(received.lines[0].sorted() == expected.sorted(), "every line exactly once")
        let label = "tcp:\(tcp)"
        #expect(waitForCounters(relay.relay) { $0[.tcpConnectionsAccepted, listener: label] == UInt64(count) })
        for client in clients { client.finish() }
        #expect(waitForCounters(relay.relay) { $0[.tcpConnectionsClosedPeer, listener: label] == UInt64(count) }, "each close read")
        let counters = relay.stop()
        #expect(counters[.tcpConnectionsAccepted, listener: label] == UInt64(count))
        #expect(counters[.tcpConnectionsRefused, listener: label] == 0)
        #expect(counters[.tcpAcceptErrors] == 0)
    }

    @Test("a reload that removes a tcp: listener (two workers) releases its port: a plain bind of it succeeds, so no accept is left holding a socket", arguments: ioDrivers)
    func removalReleasesPort(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let relay = try InProcessRelay(backends: [backend], driver: driver) { configuration in
            configuration.threads = 2
            let cpu = nextTestCPU()
            configuration.cpus = [cpu, cpu]
        }
        var next = relay.relay.configurationInForce
        // A port below the ephemeral range (`TestPorts`): once the listener is removed, no
        // socket of another test is given it, so a refused connect is the removal's doing.
        let port = try unusedTCPPort()
        next.tcpListeners = [SocketAddress(numericHost: "127.0.0.1", port: port)!]
        #expect(try relay.relay.reload(to: next, addresses: [backend.address]).workersNotApplied == 0)
        let tcp = try #require(relay.relay.tcpListenAddresses.first)
        #expect(!portFree(tcp, seconds: 0), "the listener holds its port")
        // One connection through the listener, closed by the client first (so the relay's side
        // leaves no TIME_WAIT on the port).
        let client = try TCPIngestClient(to: tcp)
        try client.write("before.removal:1|c\n")
        #expect(try collect(from: [backend], expectedLines: 1).lines[0] == ["before.removal:1|c"])
        client.finish()
        let label = "tcp:\(tcp)"
        #expect(waitForCounters(relay.relay) { $0[.tcpConnectionsClosedPeer, listener: label] == 1 })
        var without = relay.relay.configurationInForce
        without.tcpListeners = []
        #expect(try relay.relay.reload(to: without, addresses: [backend.address]).workersNotApplied == 0)
        #expect(throws: Errno.self, "the removed listener takes no connection") { _ = try TCPIngestClient(to: tcp) }
        #expect(portFree(tcp, seconds: 2), "every worker's listening socket closed once its accept ended")
        let counters = relay.stop()
        #expect(counters[.tcpConnectionsAccepted, listener: label] == 1)
        #expect(counters[.tcpAcceptErrors] == 0, "the cancelled accepts are not errors")
    }

    @Test("a stop while clients keep connecting ends: every connection accepted is closed and counted, and none is taken after", arguments: ioDrivers)
    func stopWhileConnecting(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let relay = try InProcessRelay(backends: [backend], driver: driver) { $0.tcpPort = 0 }
        let tcp = try #require(relay.relay.tcpListenAddresses.first)
        let label = "tcp:\(tcp)"
        let stopping = StopFlag()
        let done = DispatchSemaphore(value: 0)
        let connector = Thread {
            defer { done.signal() }
            // Connects (and sends a line) until the stop is under way, at most 2 000 times.
            var clients: [TCPIngestClient] = []
            for index in 0..<2_000 where !stopping.isSet {
                guard let client = try? TCPIngestClient(to: tcp) else { break }
                try? client.write("arriving.\(index):1|c\n")
                clients.append(client)
            }
            // Held open until here: the relay, not the client, closes them at the stop.
            _ = clients.count
        }
        connector.start()
        #expect(waitForCounters(relay.relay) { $0[.tcpConnectionsAccepted, listener: label] >= 20 }, "connections arriving")
        let counters = relay.stop()
        stopping.set()
        #expect(done.wait(timeout: .now() + 10) == .success, "the connecting thread ended")
        let accepted = counters[.tcpConnectionsAccepted, listener: label]
        #expect(accepted >= 20)
        #expect(counters[.tcpConnectionsClosedStop, listener: label] + counters[.tcpConnectionsClosedPeer, listener: label] == accepted,
                "every connection accepted was closed and counted")
        #expect(throws: Errno.self, "the stopped relay takes no connection") { _ = try TCPIngestClient(to: tcp) }
    }
}
