@testable import RelayKernel
import Foundation
import Glibc
import Synchronization
import Testing
@testable import UringRelay

/// Upgrades with TCP ingest listeners: every worker's listening socket handed over
/// (`--control-socket`, `run --takeover`, protocol version 3), so no connect is ever refused and
/// what waits in a backlog is accepted by the new relay.
@Suite("Takeover of TCP ingest listeners", .onOwnThread)
struct TCPTakeoverTests {
    /// The distinct line `tcpto.CONNECTION.INDEX:1|c`.
    static func line(_ connection: Int, _ index: Int) -> String { "tcpto.\(connection).\(index):1|c" }

    /// The arguments of a relay on UDP 127.0.0.1:`udpPort` and TCP 127.0.0.1:`tcpPort`.
    static func arguments(
        udpPort: UInt16, tcpPort: UInt16, threads: [String], control: TakeoverTests.ControlPath, backend: TestBackend, takeover: Bool = false
    ) -> [String] {
        ["--bind", "127.0.0.1", "--port", "\(udpPort)", "--tcp-port", "\(tcpPort)", "--control-socket", control.path] + threads
            + (takeover ? ["--takeover", control.path] : []) + [backend.spec]
    }

    @Test(
        "two successive takeovers while clients keep connecting over TCP: no connect refused, every connection accepted by exactly one relay, no line duplicated, a line lost only on a connection an old relay closed at its stop",
        arguments: ioDrivers)
    func connectsDuringTakeover(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let control = TakeoverTests.ControlPath()
        let tcpPort = try unusedTCPPort()
        var current = try RelayProcess(
            driver: driver, Self.arguments(udpPort: 0, tcpPort: tcpPort, threads: twoWorkerArguments, control: control, backend: backend))
        let udp = try current.listenAddress()
        #expect(current.waitForLog("listening on 127.0.0.1:\(udp.port), tcp:127.0.0.1:\(tcpPort)"), "\(current.standardError)")
        #expect(current.waitForLog("control socket on \(control.path)"), "\(current.standardError)")

        let lines = 10
        // Bounds well past what a slow run needs (a loaded host's takeovers took ~40 s while the
        // clients made 4 000 connections: the old bounds ended them before the last step), and
        // within the ephemeral ports a run's closed connections hold in TIME_WAIT.
        let clients = try ConnectingClients(
            to: SocketAddress(numericHost: "127.0.0.1", port: tcpPort)!, linesPerConnection: lines, maxConnections: 12_000, seconds: 90, line: Self.line)
        #expect(clients.waitUntilDone(100, seconds: 5))
        var old: [RelayProcess] = []
        for step in 1...2 {
            let next = try RelayProcess(
                driver: driver,
                Self.arguments(udpPort: udp.port, tcpPort: tcpPort, threads: twoWorkerArguments, control: control, backend: backend, takeover: true))
            _ = try next.listenAddress()
            #expect(next.waitForLog("takeover complete"), "step \(step): \(next.standardError)")
            #expect(next.waitForLog("control socket on \(control.path)"), "step \(step): \(next.standardError)")
            // The new relay names the TCP listener as the old one did (its label and id).
            #expect(next.standardError.contains("listening on 127.0.0.1:\(udp.port), tcp:127.0.0.1:\(tcpPort)"), "\(next.standardError)")
            #expect(!next.standardError.contains("hands over no TCP listener"), "\(next.standardError)")
            #expect(current.waitForExit(seconds: 10) == 0, "step \(step): \(current.standardError)")
            old.append(current)
            current = next
            // Connections keep coming, served by the new relay alone now.
            let atExit = clients.done
            #expect(clients.waitUntilDone(atExit + 100, seconds: 5), "step \(step)")
        }
        let result = clients.stop()
        current.signal(SIGTERM)
        #expect(current.waitForExit(seconds: 10) == 0, "\(current.standardError)")

        #expect(result.refused == 0, "connects refused during the takeovers")
        #expect(result.failed == 0)
        // Each relay counts from zero: together they accepted every connection once.
        var accepted: [UInt64] = []
        var closedAtStop: UInt64 = 0
        for (index, relay) in (old + [current]).enumerated() {
            let count = try #require(relay.counter("statsrelay.tcp_connections_accepted"), "relay \(index)")
            accepted.append(count)
            // Its counters explain its connections: each closed once, by its client or its stop.
            let stop = relay.counter("statsrelay.tcp_connections_closed.stop") ?? 0
            let closed = (relay.counter("statsrelay.tcp_connections_closed.peer") ?? 0) + stop
                + (relay.counter("statsrelay.tcp_connections_closed.error") ?? 0)
            #expect(closed == count, "relay \(index): \(relay.standardError)")
            #expect(relay.counter("statsrelay.tcp_connections_refused") == 0, "relay \(index)")
            if index < old.count { closedAtStop += stop }
        }
        #expect(accepted.reduce(0, +) == UInt64(result.connected), "accepted \(accepted), \(result.connected) connected")
        #expect(accepted.allSatisfy { $0 > 0 }, "accepted \(accepted)")

        let expected = result.written.count * lines
        let received = try collect(from: [backend], expectedLines: expected, seconds: 15)
        let all = received.lines[0]
        let distinct = Set(all)
        #expect(distinct.count == all.count, "\(all.count - distinct.count) lines duplicated")
        var incomplete = 0
        for connection in result.written where !(0..<lines).allSatisfy({ distinct.contains(Self.line(connection, $0)) }) { incomplete += 1 }
        // Only a connection an old relay closed at its stop can miss lines.
        #expect(UInt64(incomplete) <= closedAtStop, "\(incomplete) connections missing lines; the old relays closed \(closedAtStop) at their stops")
        let relayed = (old + [current]).reduce(UInt64(0)) { $0 + ($1.counter("statsrelay.lines_forwarded") ?? 0) }
        #expect(relayed == UInt64(all.count), "the relays forwarded \(relayed) lines, the backend got \(all.count)")
    }

    @Test(
        "connections waiting in a listening socket's backlog, never accepted by the old relay, are accepted and relayed by the new one",
        arguments: ioDrivers)
    func backlogServedByNewRelay(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let control = TakeoverTests.ControlPath()
        // The test plays the old relay: its sockets, and a backlog it never accepts from.
        let server = try UnixStreamSocket.listening(at: control.path)
        let udp = try UDPSocket.bound(to: SocketAddress(numericHost: "127.0.0.1", port: 0)!, reusePort: true)
        let tcp = try TCPListenSocket.listening(on: SocketAddress(numericHost: "127.0.0.1", port: 0)!)
        let tcpAddress = tcp.localAddress
        let connections = 20
        let lines = 10
        var clients: [TCPIngestClient] = []
        for connection in 0..<connections {
            let client = try TCPIngestClient(to: tcpAddress)
            try client.write((0..<lines).map { Self.line(connection, $0) + "\n" }.joined())
            client.finish()
            clients.append(client)
        }
        let relay = try RelayProcess(
            driver: driver,
            ["--bind", "127.0.0.1", "--port", "\(udp.localAddress.port)", "--tcp-port", "\(tcpAddress.port)", "--takeover", control.path]
                + TakeoverTests.oneWorker + [backend.spec])
        var entry = pollfd(fd: server.descriptor, events: Int16(POLLIN), revents: 0)
        try #require(Glibc.poll(&entry, 1, 10_000) == 1, "the new relay did not connect: \(relay.standardError)")
        guard let connection = try server.accept() else {
            Issue.record("no connection to accept")
            return
        }
        let request = try connection.receiveFrame(timeoutMilliseconds: 10_000)
        #expect(TakeoverMessage(decoding: request.payload) == .takeover(
            version: TakeoverMessage.version, threads: 1, listeners: ["127.0.0.1:\(udp.localAddress.port)", "tcp:127.0.0.1:\(tcpAddress.port)"]))
        try connection.sendFrame(
            TakeoverMessage.offer(version: TakeoverMessage.version, threads: 1, listeners: 2, pid: getpid()).encoded, timeoutMilliseconds: 2_000)
        try connection.sendFrame(
            TakeoverMessage.sockets(index: 0, address: udp.localAddress.description, drops: [0]).encoded,
            passing: [SocketBox(try udp.duplicate())], timeoutMilliseconds: 2_000)
        try connection.sendFrame(
            TakeoverMessage.sockets(index: 1, address: "tcp:\(tcpAddress)").encoded, passing: [try tcp.passable()], timeoutMilliseconds: 2_000)
        let ready = try connection.receiveFrame(timeoutMilliseconds: 10_000)
        #expect(TakeoverMessage(decoding: ready.payload) == .ready, "\(relay.standardError)")
        try connection.sendFrame(TakeoverMessage.stopping.encoded, timeoutMilliseconds: 2_000)
        try connection.sendFrame(TakeoverMessage.done(received: 0, forwarded: 0, dropped: 0).encoded, timeoutMilliseconds: 2_000)
        #expect(relay.waitForLog("takeover complete"), "\(relay.standardError)")

        let expected = Set((0..<connections).flatMap { connection in (0..<lines).map { Self.line(connection, $0) } })
        let received = try collect(from: [backend], expectedLines: expected.count)
        #expect(received.lines[0].count == expected.count)
        #expect(Set(received.lines[0]) == expected)
        // The relay read each to its end and closed it.
        for client in clients { #expect(client.waitForClose(seconds: 5)) }
        relay.signal(SIGTERM)
        #expect(relay.waitForExit() == 0, "\(relay.standardError)")
        #expect(relay.counter("statsrelay.tcp_connections_accepted") == UInt64(connections))
        #expect(relay.counter("statsrelay.tcp_connections_closed.peer") == UInt64(connections))
        // Once handed over the socket is the new relay's alone: its stop ends listening (a
        // connect is refused), though the test, as the old relay gone, still holds a descriptor.
        #expect(throws: Errno(rawValue: ECONNREFUSED)) { _ = try TCPIngestClient(to: tcpAddress) }
    }

    @Test("a takeover whose TCP listeners differ is refused with exit 64 naming them, and the running relay keeps relaying over TCP", arguments: ioDrivers)
    func refusedOnTCPMismatch(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let control = TakeoverTests.ControlPath()
        let tcpPort = try unusedTCPPort()
        let running = try RelayProcess(
            driver: driver, Self.arguments(udpPort: 0, tcpPort: tcpPort, threads: TakeoverTests.oneWorker, control: control, backend: backend))
        let udp = try running.listenAddress()
        #expect(running.waitForLog("control socket on \(control.path)"), "\(running.standardError)")

        let other = try unusedTCPPort()
        let moved = try RelayProcess.run(
            ["--io-backend", driver.rawValue]
                + Self.arguments(udpPort: udp.port, tcpPort: other, threads: TakeoverTests.oneWorker, control: control, backend: backend, takeover: true))
        #expect(moved.status == 64, "\(moved.error)")
        #expect(moved.error.contains("takeover refused by the running relay (mismatch): listeners differ: running 127.0.0.1:0 (bound 127.0.0.1:\(udp.port)), tcp:127.0.0.1:\(tcpPort)"), "\(moved.error)")
        #expect(moved.error.contains("asked 127.0.0.1:\(udp.port), tcp:127.0.0.1:\(other)"), "\(moved.error)")
        let without = try RelayProcess.run(
            ["--io-backend", driver.rawValue, "--bind", "127.0.0.1", "--port", "\(udp.port)", "--control-socket", control.path, "--takeover", control.path]
                + TakeoverTests.oneWorker + [backend.spec])
        #expect(without.status == 64, "\(without.error)")
        #expect(without.error.contains("listeners differ"), "\(without.error)")
        #expect(without.error.contains("asked 127.0.0.1:\(udp.port); "), "\(without.error)")

        let client = try TCPIngestClient(to: SocketAddress(numericHost: "127.0.0.1", port: tcpPort)!)
        try client.write((0..<50).map { Self.line(0, $0) + "\n" }.joined())
        client.finish()
        let received = try collect(from: [backend], expectedLines: 50)
        #expect(Set(received.lines[0]) == Set((0..<50).map { Self.line(0, $0) }))
        #expect(client.waitForClose(seconds: 5))
        running.signal(SIGTERM)
        #expect(running.waitForExit() == 0, "\(running.standardError)")
        #expect(running.counter("statsrelay.lines_forwarded") == 50)
        #expect(running.counter("statsrelay.tcp_connections_accepted") == 1)
        #expect(running.standardError.contains("takeover refused: this relay keeps running"))
    }
}

/// A thread that connects to a TCP listener over and over, each time writing
/// `linesPerConnection` lines and its end (FIN), then waiting for the relay to close the
/// connection; until stopped, `maxConnections` made, or `seconds` pass.
final class ConnectingClients: Sendable {
    private final class Shared: Sendable {
        let running = Atomic<Bool>(true)
        /// Connections made and closed by the relay.
        let done = Atomic<Int>(0)
        let refused = Atomic<Int>(0)
        let failed = Atomic<Int>(0)
        /// Connections whose lines were all written.
        let written = Mutex<[Int]>([])
    }
    private let shared = Shared()
    private let thread: WorkerThreadHandle

    init(
        to address: SocketAddress, linesPerConnection: Int, maxConnections: Int, seconds: Double,
        line: @escaping @Sendable (Int, Int) -> String
    ) throws {
        thread = WorkerThreadHandle(try WorkerThread(name: "test-tcp-clients", cpu: nil) { [shared] _ in
            let deadline = MonotonicClock.nanoseconds() + UInt64(seconds * 1e9)
            var connection = 0
            while connection < maxConnections && shared.running.load(ordering: .relaxed) && MonotonicClock.nanoseconds() < deadline {
                defer { connection += 1 }
                let client: TCPIngestClient
                do { client = try TCPIngestClient(to: address) } catch {
                    if (error as? Errno)?.rawValue == ECONNREFUSED { shared.refused.add(1, ordering: .relaxed) } else { shared.failed.add(1, ordering: .relaxed) }
                    continue
                }
                do {
                    try client.write((0..<linesPerConnection).map { line(connection, $0) + "\n" }.joined())
                    shared.written.withLock { $0.append(connection) }
                } catch {
                    shared.failed.add(1, ordering: .relaxed)
                }
                client.finish()
                _ = client.waitForClose(seconds: 5)
                shared.done.add(1, ordering: .relaxed)
            }
        })
    }

    /// Connections made and closed so far.
    var done: Int { shared.done.load(ordering: .relaxed) }

    /// Waits (polling, at most `seconds`) until `count` connections are done.
    func waitUntilDone(_ count: Int, seconds: Double) -> Bool {
        let deadline = MonotonicClock.nanoseconds() + UInt64(seconds * 1e9)
        while done < count {
            if MonotonicClock.nanoseconds() > deadline { return false }
            usleep(1_000)
        }
        return true
    }

    /// Stops, waits for the thread; how many connected, were refused or failed, and which
    /// connections had every line written.
    func stop() -> (connected: Int, refused: Int, failed: Int, written: [Int]) {
        shared.running.store(false, ordering: .relaxed)
        thread.join()
        return (shared.done.load(ordering: .relaxed), shared.refused.load(ordering: .relaxed), shared.failed.load(ordering: .relaxed),
                shared.written.withLock { $0 })
    }
}

/// A relay with TCP listeners against a successor too old to take them (protocol version 2).
@Suite("Takeover of TCP ingest listeners: an older successor", .onOwnThread)
struct TCPTakeoverOlderPeerTests {
    @Test("a version 2 request names no TCP listener: the datagram listeners alone are offered, and the relay says its TCP listeners are not handed over", arguments: ioDrivers)
    func versionTwoRequest(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let control = TakeoverTests.ControlPath()
        let tcpPort = try unusedTCPPort()
        let running = try RelayProcess(
            driver: driver,
            TCPTakeoverTests.arguments(udpPort: 0, tcpPort: tcpPort, threads: TakeoverTests.oneWorker, control: control, backend: backend))
        let udp = try running.listenAddress()
        #expect(running.waitForLog("control socket on \(control.path)"), "\(running.standardError)")
        do {
            let connection = try UnixStreamSocket.connected(to: control.path)
            try connection.sendFrame(
                TakeoverMessage.takeover(version: 2, threads: 1, listeners: [udp.description]).encoded, timeoutMilliseconds: 2_000)
            let offer = try connection.receiveFrame(timeoutMilliseconds: 5_000)
            #expect(TakeoverMessage(decoding: offer.payload) == .offer(version: 2, threads: 1, listeners: 1, pid: running.process.processIdentifier))
            let frame = try connection.receiveFrame(timeoutMilliseconds: 5_000)
            #expect(TakeoverMessage(decoding: frame.payload) == .sockets(index: 0, address: udp.description, drops: [0]))
            #expect(frame.sockets.count == 1)
            // Gone without `ready`: the relay keeps running as it was.
        }
        #expect(running.waitForLog("takeover in protocol version 2: the new relay takes no TCP listener over"), "\(running.standardError)")
        #expect(running.waitForLog("takeover failed in the new relay; this one keeps running"), "\(running.standardError)")
        let client = try TCPIngestClient(to: SocketAddress(numericHost: "127.0.0.1", port: tcpPort)!)
        try client.write((0..<20).map { TCPTakeoverTests.line(0, $0) + "\n" }.joined())
        client.finish()
        #expect(Set(try collect(from: [backend], expectedLines: 20).lines[0]) == Set((0..<20).map { TCPTakeoverTests.line(0, $0) }))
        running.signal(SIGTERM)
        #expect(running.waitForExit() == 0, "\(running.standardError)")
        #expect(running.counter("statsrelay.tcp_connections_accepted") == 1)
    }
}

/// TCP listeners a reload adds: the listener set is the takeover's or the reload's, never both;
/// one added by a reload is handed over like one configured at start.
@Suite("Takeover of TCP ingest listeners added by a reload", .serialized, .timeLimit(.minutes(1)), .onOwnThread)
struct TCPTakeoverReloadTests {
    @Test(
        "a reload adding a TCP listener while a takeover holds the offer is refused; applied once it fails, the listener is handed over by the next takeover and accepts in the new relay",
        arguments: ioDrivers)
    func reloadAddedListenerHandedOver(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let control = TakeoverTests.ControlPath()
        let udp = SocketAddress(numericHost: "127.0.0.1", port: try unusedPort())!
        let tcp = SocketAddress(numericHost: "127.0.0.1", port: try unusedTCPPort())!
        let file = try TemporaryConfigFile(TakeoverReloadTests.yaml(listeners: [udp.description], control: control.path, backend: backend))
        let cpu = "\(nextTestCPU())"
        let first = try RelayProcess(driver: driver, ["--config", file.path, "--cpus", cpu])
        #expect(try first.listenAddress() == udp)
        #expect(first.waitForLog("control socket on \(control.path)"), "\(first.standardError)")

        do {
            let held = try TakeoverTests.takeOffer(control: control, address: udp, relay: first)
            try file.write(TakeoverReloadTests.yaml(listeners: [udp.description, "tcp:\(tcp)"], control: control.path, backend: backend))
            first.signal(SIGHUP)
            #expect(first.waitForLog("a takeover is under way: the listeners cannot change now", seconds: 10), "\(first.standardError)")
            #expect(throws: Errno(rawValue: ECONNREFUSED)) { _ = try TCPIngestClient(to: tcp) }
            _ = consume held
        }
        #expect(first.waitForLog("takeover failed in the new relay; this one keeps running"), "\(first.standardError)")
        first.signal(SIGHUP)
        #expect(first.waitForLog("reload: applied", seconds: 10), "\(first.standardError)")
        let before = try TCPIngestClient(to: tcp)
        try before.write("tcpreload.before:1|c\n")
        before.finish()
        #expect(Set(try collect(from: [backend], expectedLines: 1).lines[0]) == ["tcpreload.before:1|c"])

        let second = try RelayProcess(driver: driver, ["--config", file.path, "--cpus", cpu, "--takeover", control.path])
        #expect(try second.listenAddress() == udp)
        #expect(second.waitForLog("takeover complete"), "\(second.standardError)")
        #expect(second.standardError.contains("listening on \(udp), tcp:\(tcp)"), "\(second.standardError)")
        #expect(first.waitForExit() == 0, "\(first.standardError)")
        let after = try TCPIngestClient(to: tcp)
        try after.write("tcpreload.after:1|c\n")
        after.finish()
        #expect(Set(try collect(from: [backend], expectedLines: 1).lines[0]) == ["tcpreload.after:1|c"])
        #expect(after.waitForClose(seconds: 5))
        second.signal(SIGTERM)
        #expect(second.waitForExit() == 0, "\(second.standardError)")
        #expect(first.counter("statsrelay.config_reloads{result=\"failure\"}") == 1)
        #expect(first.counter("statsrelay.tcp_connections_accepted") == 1)
        #expect(second.counter("statsrelay.tcp_connections_accepted") == 1)
    }
}
