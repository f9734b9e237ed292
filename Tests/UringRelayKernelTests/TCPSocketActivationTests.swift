@testable import RelayKernel
import Foundation
import Glibc
import Testing
@testable import UringRelay

/// TCP ingest listeners passed by systemd (`ListenStream=`, `LISTEN_FDS`): adopted, matched to
/// the configured TCP listener, kept listening across a restart.
@Suite("Socket activation of TCP ingest listeners", .onOwnThread)
struct TCPSocketActivationTests {
    static func line(_ connection: Int, _ index: Int) -> String { "tcpact.\(connection).\(index):1|c" }

    /// A relay of two workers on `udp` and `tcp`, each one socket every worker uses, as systemd
    /// passes them by default.
    static func start(udp: borrowing UDPSocket, tcp: borrowing TCPListenSocket, backend: TestBackend, driver: IOBackendChoice) throws -> Relay {
        var configuration = RelayConfiguration(backends: [try BackendAddress(parsing: backend.spec)])
        configuration.bindHost = "127.0.0.1"
        configuration.port = udp.localAddress.port
        configuration.tcpPort = tcp.localAddress.port
        configuration.threads = 2
        configuration.cpus = [nextTestCPU(), nextTestCPU()]
        configuration.ioBackend = driver
        let passed = [(socket: SocketBox(try udp.duplicate()), name: "udp"), (socket: try tcp.passable(), name: "tcp")]
        let inherited = try SocketActivation.listeners(passed, configuration: configuration)
        #expect(inherited.tcpAddresses == [tcp.localAddress])
        #expect(inherited.tcpSockets.map(\.count) == [2])
        let relay = try Relay(configuration: configuration, logger: .init(label: "test"))
        let facts = try relay.start(inheriting: inherited)
        #expect(facts.tcpListeners == [tcp.localAddress])
        #expect(relay.driver == driverExpected(for: driver))
        return relay
    }

    /// Connects to `address`, writes `lines` lines of connection `connection` and its end.
    static func client(_ connection: Int, lines: Int, to address: SocketAddress) throws -> TCPIngestClient {
        let client = try TCPIngestClient(to: address)
        try client.write((0..<lines).map { line(connection, $0) + "\n" }.joined())
        client.finish()
        return client
    }

    @Test(
        "a TCP listening socket held elsewhere: a connection made before the relay runs is served once it starts, and one made between two relays waits in the backlog for the next",
        arguments: ioDrivers)
    func restartKeepsBacklog(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        // Stand in for systemd: bound once, held across both relays.
        let udp = try UDPSocket.bound(to: SocketAddress(numericHost: "127.0.0.1", port: 0)!)
        let tcp = try TCPListenSocket.listening(on: SocketAddress(numericHost: "127.0.0.1", port: 0)!)
        let early = try Self.client(0, lines: 50, to: tcp.localAddress)

        let first = try Self.start(udp: udp, tcp: tcp, backend: backend, driver: driver)
        let expectedFirst = Set((0..<50).map { Self.line(0, $0) })
        #expect(Set(try collect(from: [backend], expectedLines: 50).lines[0]) == expectedFirst)
        #expect(early.waitForClose(seconds: 5))
        first.stop()
        let (counters, failures) = first.wait()
        #expect(failures.isEmpty)
        #expect(counters[.tcpConnectionsAccepted] == 1)
        #expect(counters[.linesForwarded] == 50)

        // No relay runs: the socket still listens (its stop left it as it was), so this
        // connection waits in the backlog.
        let between = try Self.client(1, lines: 50, to: tcp.localAddress)
        let second = try Self.start(udp: udp, tcp: tcp, backend: backend, driver: driver)
        let received = try collect(from: [backend], expectedLines: 50)
        #expect(received.lines[0].count == 50)
        #expect(Set(received.lines[0]) == Set((0..<50).map { Self.line(1, $0) }))
        #expect(between.waitForClose(seconds: 5))
        second.stop()
        let (after, secondFailures) = second.wait()
        #expect(secondFailures.isEmpty)
        #expect(after[.tcpConnectionsAccepted] == 1)
        #expect(after[.linesForwarded] == 50)
    }

    @Test("TCP sockets that do not fit the TCP listeners are refused, naming the socket and why")
    func mismatch() throws {
        let backend = try TestBackend()
        let udp = try UDPSocket.bound(to: SocketAddress(numericHost: "127.0.0.1", port: 0)!)
        let tcp = try TCPListenSocket.listening(on: SocketAddress(numericHost: "127.0.0.1", port: 0)!)
        var configuration = RelayConfiguration(backends: [try BackendAddress(parsing: backend.spec)])
        configuration.bindHost = "127.0.0.1"
        configuration.port = udp.localAddress.port
        configuration.threads = 3
        // No TCP listener configured.
        #expect {
            _ = try SocketActivation.listeners([(SocketBox(try udp.duplicate()), "udp"), (try tcp.passable(), "tcp")], configuration: configuration)
        } throws: { error in
            "\(error)".contains("LISTEN_FDS socket 1 (tcp)") && "\(error)".contains("a TCP socket bound to \(tcp.localAddress), which no TCP listener is")
        }
        configuration.tcpPort = tcp.localAddress.port
        // Two sockets for three workers.
        #expect {
            _ = try SocketActivation.listeners(
                [(SocketBox(try udp.duplicate()), "udp"), (try tcp.passable(), "tcp"), (try tcp.passable(), "tcp")], configuration: configuration)
        } throws: { error in
            "\(error)".contains("2 sockets passed for this TCP listener: expected 1 (accepted on by every worker) or one per worker (3)")
        }
        // A stream socket bound but not listening.
        let bound = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        try #require(bound >= 0)
        let wildcard = SocketAddress(numericHost: "127.0.0.1", port: 0)!
        _ = wildcard.withUnsafeSockaddr { pointer, length in bind(bound, pointer, length) }
        let notListening = SocketBox(UDPSocket.adopting(descriptor: bound))
        #expect {
            _ = try SocketActivation.listeners([(SocketBox(try udp.duplicate()), "udp"), (notListening, "idle")], configuration: configuration)
        } throws: { error in
            "\(error)".contains("LISTEN_FDS socket 1 (idle)") && "\(error)".contains("not listening (SO_ACCEPTCONN")
        }
    }

    /// Stands in for systemd as `systemd-socket-activate` would, for the two kinds of socket the
    /// relay needs at once (that tool passes only datagram or only stream sockets in one run,
    /// and the relay always has a UDP listener): binds UDP `argv[1]` and listens on TCP
    /// `argv[2]` on 127.0.0.1, places them at descriptors 3 and 4, sets `LISTEN_PID` to its own
    /// pid, `LISTEN_FDS=2`, `LISTEN_FDNAMES=udp:tcp`, and `execv`s the rest (same pid).
    static let launcherProgram = """
        import os, socket, sys
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind(("127.0.0.1", int(sys.argv[1])))
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        t.bind(("127.0.0.1", int(sys.argv[2])))
        t.listen(128)
        copies = [os.dup(u.fileno()), os.dup(t.fileno())]
        for offset, fd in enumerate(copies):
            os.dup2(fd, 3 + offset, inheritable=True)
        os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="2", LISTEN_FDNAMES="udp:tcp")
        os.execv(sys.argv[3], sys.argv[3:])
        """

    @Test("a relay started with a TCP listening socket in LISTEN_FDS accepts on it and relays its lines, beside the UDP socket passed with it", arguments: ioDrivers)
    func launchedWithListenFDs(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let python = try RelayLauncher.requirePython()
        let backend = try TestBackend()
        let udpPort = try unusedPort()
        let tcpPort = try unusedTCPPort()
        let relay = try RelayProcess(
            driver: driver, launcher: [python.path, "-c", Self.launcherProgram, "\(udpPort)", "\(tcpPort)"],
            ["--bind", "127.0.0.1", "--port", "\(udpPort)", "--tcp-port", "\(tcpPort)"] + twoWorkerArguments + [backend.spec])
        #expect(try relay.listenAddress().port == udpPort)
        #expect(relay.standardError.contains("listening on 127.0.0.1:\(udpPort), tcp:127.0.0.1:\(tcpPort)"), "\(relay.standardError)")
        #expect(relay.standardError.contains("socket activation: relaying on the sockets systemd passed"), "\(relay.standardError)")
        #expect(relay.standardError.contains("names=udp:tcp sockets=2 tcp_listeners=127.0.0.1:\(tcpPort)"), "\(relay.standardError)")
        let client = try Self.client(0, lines: 50, to: SocketAddress(numericHost: "127.0.0.1", port: tcpPort)!)
        try send((50..<60).map { Self.line(0, $0) }, to: SocketAddress(numericHost: "127.0.0.1", port: udpPort)!)
        let received = try collect(from: [backend], expectedLines: 60)
        #expect(received.lines[0].count == 60)
        #expect(Set(received.lines[0]) == Set((0..<60).map { Self.line(0, $0) }))
        #expect(client.waitForClose(seconds: 5))
        relay.signal(SIGTERM)
        #expect(relay.waitForExit() == 0, "\(relay.standardError)")
        #expect(relay.counter("statsrelay.tcp_connections_accepted") == 1)
        #expect(relay.counter("statsrelay.lines_forwarded") == 60)
    }
}
