@testable import RelayKernel
import Foundation
import Glibc
import Testing
@testable import UringRelay

/// The `statsrelay` executable with TCP ingest: `--tcp-port` beside the UDP listener, a second
/// process on the TCP port refused (exit 71), a `tcp://` backend that is the relay's own TCP
/// listener refused (exit 64).
@Suite("The executable with TCP ingest", .serialized, .timeLimit(.minutes(1)), .onOwnThread)
struct TCPIngestCommandTests {
    @Test("--tcp-port: lines over TCP and datagrams over UDP both relayed, counted under tcp:ADDR and udp:ADDR; a second statsrelay on the TCP port exits 71 naming it", arguments: ioDrivers)
    func tcpPortBesideUDP(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let tcpPort = try unusedTCPPort()
        let first = try RelayProcess(driver: driver, ["--bind", "127.0.0.1", "--port", "0", "--tcp-port", "\(tcpPort)", "--threads", "1", backend.spec])
        let listen = try first.listenAddress()
        // How the connections are read, in the start-up line: by completions on io_uring (receive
        // bundles where the ring has them), through epoll on the portable driver.
        let startup = first.logLine(containing: "listening on ") ?? ""
        #expect(startup.contains("tcp:127.0.0.1:\(tcpPort)"), "\(startup)")
        if driver == .uring {
            #expect(startup.contains("tcp_reads=bundles") || startup.contains("tcp_reads=multishot"), "\(startup)")
        } else {
            #expect(startup.contains("tcp_reads=epoll"), "\(startup)")
        }
        let client = try TCPIngestClient(to: SocketAddress(numericHost: "127.0.0.1", port: tcpPort)!)
        try client.write("over.tcp:1|c\n")
        try send(["over.udp:1|c"], to: listen)
        let received = try collect(from: [backend], expectedLines: 2)
        #expect(received.lines[0].sorted() == ["over.tcp:1|c", "over.udp:1|c"])
        let second = try RelayProcess.run(["--io-backend", driver.rawValue, "--bind", "127.0.0.1", "--port", "0", "--tcp-port", "\(tcpPort)", "--threads", "1", backend.spec])
        #expect(second.status == 71)
        #expect(second.error.contains("bind tcp 127.0.0.1:\(tcpPort): Address already in use (errno 98)"), "\(second.error)")
        first.signal(SIGTERM)
        #expect(first.waitForExit() == 0)
        #expect(first.counter("statsrelay.lines_received") == 2)
        #expect(first.counter("statsrelay.tcp_connections_accepted") == 1)
        #expect(first.counter("statsrelay.tcp_connections_closed.stop") == 1)
    }

    @Test(
        "a stop asked while connections wait in the backlog (the relay stopped as they connected and wrote) relays every complete line they sent: none reset, each counted accepted and closed stop, its half line dropped",
        arguments: ioDrivers)
    func stopTakesTheBacklog(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let tcpPort = try unusedTCPPort()
        let relay = try RelayProcess(driver: driver, ["--bind", "127.0.0.1", "--port", "0", "--tcp-port", "\(tcpPort)", "--threads", "1", backend.spec])
        _ = try relay.listenAddress()
        try #require(relay.suspend(), "the relay did not stop")
        // The kernel completes each handshake and takes each write while the relay is stopped:
        // the connections wait in the backlog, their bytes acknowledged.
        let clients = try (0..<8).map { _ in try TCPIngestClient(to: SocketAddress(numericHost: "127.0.0.1", port: tcpPort)!) }
        var expected: [String] = []
        for (index, client) in clients.enumerated() {
            let lines = (0..<50).map { "backlog.\(index).\($0):1|c" }
            expected += lines
            try client.write(lines.map { $0 + "\n" }.joined() + "backlog.\(index).half:1")
        }
        for client in clients { try #require(client.waitUntilAcknowledged(seconds: 10), "the relay's kernel took every byte") }
        // The stop is asked before the relay runs again: whether a worker takes the backlog in
        // its last running turn or as its socket stops listening (which of the two is not in
        // this test's hands: TCPBacklogTests drives the second), nothing is reset.
        relay.signal(SIGTERM)
        relay.signal(SIGCONT)
        #expect(relay.waitForExit() == 0)
        let received = try collect(from: [backend], expectedLines: expected.count, seconds: 5)
        #expect(received.lines[0].sorted() == expected.sorted(), "every complete line relayed")
        #expect(relay.counter("statsrelay.tcp_connections_accepted") == UInt64(clients.count))
        #expect(relay.counter("statsrelay.tcp_connections_closed.stop") == UInt64(clients.count))
        #expect(relay.counter("statsrelay.lines_dropped.tcp_partial") == UInt64(clients.count))
        #expect(relay.counter("statsrelay.tcp_bytes_dropped.unread") == 0)
    }

    @Test("a tcp:// backend that is the relay's own TCP listener exits 64 naming it; a UDP backend on that port is no loop")
    func selfLoop() throws {
        let port = try unusedTCPPort()
        let udpPort = try unusedPort()
        let result = try RelayProcess.run(["--bind", "127.0.0.1", "--port", "\(udpPort)", "--tcp-port", "\(port)", "tcp://127.0.0.1:\(port)"])
        #expect(result.status == 64, "\(result.error)")
        #expect(result.error.contains("invalid backend 'tcp://127.0.0.1:\(port)': reaches this relay's own TCP listener tcp:127.0.0.1:\(port)"), "\(result.error)")
        #expect(!result.error.contains("listening on"))
        let sendproto = try RelayProcess.run(["--bind", "127.0.0.1", "--port", "\(udpPort)", "--tcp-port", "\(port)", "--sendproto", "TCP", "127.0.0.1:\(port)"])
        #expect(sendproto.status == 64, "\(sendproto.error)")
        #expect(sendproto.error.contains("reaches this relay's own TCP listener"), "\(sendproto.error)")
    }
}
