@testable import RelayKernel
import Foundation
import Glibc
import Testing
@testable import UringRelay

/// Listening sockets passed by systemd (`LISTEN_FDS`, `deploy/statsrelay.socket`).
@Suite("Socket activation", .onOwnThread)
struct SocketActivationTests {
    static func line(_ index: Int) -> String { "activated.\(index):1|c" }

    /// A relay of two workers on `socket` (one socket read by both, as systemd passes it).
    static func start(on socket: borrowing UDPSocket, backend: TestBackend, driver: IOBackendChoice) throws -> Relay {
        var configuration = RelayConfiguration(backends: [try BackendAddress(parsing: backend.spec)])
        configuration.bindHost = "127.0.0.1"
        configuration.port = socket.localAddress.port
        configuration.threads = 2
        configuration.cpus = [nextTestCPU(), nextTestCPU()]
        configuration.ioBackend = driver
        let passed = [(socket: SocketBox(try socket.duplicate()), name: "statsrelay")]
        let inherited = try SocketActivation.listeners(passed, configuration: configuration)
        #expect(inherited.sharedByWorkers == [true])
        let relay = try Relay(configuration: configuration, logger: .init(label: "test"))
        let facts = try relay.start(inheriting: inherited)
        let bound = socket.localAddress
        #expect(facts.listen == bound)
        #expect(relay.driver == driverExpected(for: driver))
        return relay
    }

    @Test(
        "a relay stopped on a socket held elsewhere leaves it as it was: what arrives until the next relay starts waits in it and is relayed then, once",
        arguments: ioDrivers)
    func restartKeepsQueue(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        // Stands in for systemd: bound once, no SO_REUSEPORT, held across both relays.
        let held = try UDPSocket.bound(to: SocketAddress(numericHost: "127.0.0.1", port: 0)!, receiveBufferBytes: 4 << 20)
        let address = held.localAddress

        let first = try Self.start(on: held, backend: backend, driver: driver)
        try send((0..<100).map(Self.line), to: address)
        #expect(Set(try collect(from: [backend], expectedLines: 100).lines[0]) == Set((0..<100).map(Self.line)))
        first.stop()
        let (counters, failures) = first.wait()
        #expect(failures.isEmpty)
        #expect(counters[.linesForwarded] == 100)
        #expect(counters[.datagramsDroppedAtExit] == 0)

        // No relay runs: the socket is neither connected to itself nor emptied, so it queues.
        try send((100..<200).map(Self.line), to: address)
        let queued = held.hasPendingDatagram
        #expect(queued)

        let second = try Self.start(on: held, backend: backend, driver: driver)
        let received = try collect(from: [backend], expectedLines: 100)
        #expect(received.lines[0].count == 100)
        #expect(Set(received.lines[0]) == Set((100..<200).map(Self.line)))
        second.stop()
        let (after, secondFailures) = second.wait()
        #expect(secondFailures.isEmpty)
        #expect(after[.linesReceived] == 100)
        #expect(after[.linesForwarded] == 100)
        #expect(after[.datagramsDroppedKernel] == 0)
    }

    @Test("sockets that do not fit the listeners are refused, naming the socket and why")
    func mismatch() throws {
        let backend = try TestBackend()
        var configuration = RelayConfiguration(backends: [try BackendAddress(parsing: backend.spec)])
        configuration.bindHost = "127.0.0.1"
        configuration.port = 8125
        configuration.threads = 3
        let elsewhere = try UDPSocket.bound(to: SocketAddress(numericHost: "127.0.0.1", port: 0)!)
        #expect {
            _ = try SocketActivation.listeners([(SocketBox(try elsewhere.duplicate()), "statsrelay")], configuration: configuration)
        } throws: { error in
            "\(error)".contains("LISTEN_FDS socket 0 (statsrelay)") && "\(error)".contains("bound to \(elsewhere.localAddress), which no listener is")
        }
        let one = try UDPSocket.bound(to: SocketAddress(numericHost: "127.0.0.1", port: 0)!, reusePort: true)
        let two = try UDPSocket.bound(to: one.localAddress, reusePort: true)
        configuration.port = one.localAddress.port
        #expect {
            _ = try SocketActivation.listeners(
                [(SocketBox(try one.duplicate()), ""), (SocketBox(try two.duplicate()), "")], configuration: configuration)
        } throws: { error in
            "\(error)".contains("2 sockets passed for this listener: expected 1 (read by every worker) or one per worker (3)")
        }
    }

    @Test("systemd-analyze verify passes on deploy/statsrelay.socket beside the service, with no warning")
    func socketUnitVerifies() throws {
        let analyze = try DeployTools.require("systemd-analyze")
        let service = try DeployTools.unitWithBuiltBinary()
        let directory = service.deletingLastPathComponent()
        defer { try? FileManager.default.removeItem(at: directory) }
        let socketUnit = directory.appendingPathComponent("statsrelay.socket")
        try String(contentsOf: DeployTools.unitFile.deletingLastPathComponent().appendingPathComponent("statsrelay.socket"), encoding: .utf8)
            .write(to: socketUnit, atomically: true, encoding: .utf8)
        let result = try DeployTools.run(analyze, ["verify", "--man=no", socketUnit.path])
        #expect(result.status == 0, "systemd-analyze verify failed:\n\(result.output)")
        let findings = result.output.split(separator: "\n").filter { $0.contains("statsrelay.socket") || $0.contains("statsrelay.service") }
        #expect(findings.isEmpty, "systemd-analyze verify reported:\n\(findings.joined(separator: "\n"))")
    }

    @Test("under systemd-socket-activate, datagrams sent before the relay ran are relayed, by two workers reading the one socket", arguments: ioDrivers)
    func systemdSocketActivate(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let activate = "/usr/bin/systemd-socket-activate"
        guard FileManager.default.isExecutableFile(atPath: activate) else {
            try Test.cancel("systemd-socket-activate is not installed")
        }
        let backend = try TestBackend()
        let port = try unusedPort()
        let relay = try RelayProcess(
            driver: driver, launcher: [activate, "--datagram", "-l", "127.0.0.1:\(port)", "--fdname=statsrelay"],
            ["--bind", "127.0.0.1", "--port", "\(port)"] + twoWorkerArguments + [backend.spec])
        let address = SocketAddress(numericHost: "127.0.0.1", port: port)!
        // systemd-socket-activate starts the relay at the first datagram; these wait for it.
        #expect(relay.waitForLog("Listening on 127.0.0.1:\(port)"), "\(relay.standardError)")
        try send((0..<50).map(Self.line), to: address)
        #expect(try relay.listenAddress() == address)
        #expect(relay.standardError.contains("socket activation: relaying on the sockets systemd passed"), "\(relay.standardError)")
        #expect(relay.standardError.contains("names=statsrelay sockets=1"), "\(relay.standardError)")
        try send((50..<100).map(Self.line), to: address)
        let received = try collect(from: [backend], expectedLines: 100)
        #expect(received.lines[0].count == 100)
        #expect(Set(received.lines[0]) == Set((0..<100).map(Self.line)))
        relay.signal(SIGTERM)
        #expect(relay.waitForExit() == 0, "\(relay.standardError)")
        #expect(relay.counter("statsrelay.lines_forwarded") == 100)
    }

    /// Stands in for a systemd that passes something wrong: binds UDP `argv[1]` on 127.0.0.1
    /// (connected to itself when `argv[2]` is `connected`, as a relay's stop leaves a listener),
    /// places it at descriptor 3, sets `LISTEN_PID` to its own pid and `LISTEN_FDS` to `argv[3]`,
    /// and `execv`s the rest (same pid).
    static let badLauncherProgram = """
        import os, socket, sys
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind(("127.0.0.1", int(sys.argv[1])))
        if sys.argv[2] == "connected":
            u.connect(u.getsockname())
        copy = os.dup(u.fileno())  # u may be descriptor 3 itself, which dup2 would leave close-on-exec
        os.dup2(copy, 3, inheritable=True)
        os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS=sys.argv[3], LISTEN_FDNAMES="udp")
        os.execv(sys.argv[4], sys.argv[4:])
        """

    /// A passed environment the relay must refuse at start: how the launcher passes the socket,
    /// `LISTEN_FDS`, and what the message says.
    static let refusedEnvironments: [(socket: String, listenFDs: String, message: String)] = [
        ("connected", "1", "'LISTEN_FDS socket 0 (udp)': descriptor 3 is connected to 127.0.0.1:"),
        // Past the one passed, descriptors 4 and 5 are not open, or the relay's own had it
        // taken them after opening anything.
        ("bound", "3", "LISTEN_FDS=3: descriptor 4 is not open (fewer sockets were passed than LISTEN_FDS says)"),
        ("bound", "abc", "LISTEN_FDS=abc is not a count of sockets"),
    ]

    @Test("a passed socket already connected, a LISTEN_FDS larger than what was passed, or one that is no count exits 64 naming the problem",
          arguments: ioDrivers, refusedEnvironments)
    func refusedAtStart(driver: IOBackendChoice, environment: (socket: String, listenFDs: String, message: String)) throws {
        try requireDriver(driver)
        let python = try RelayLauncher.requirePython()
        let backend = try TestBackend()
        let port = try unusedPort()
        // Refused before a driver is chosen: no driver ran, and `waitForExit` checks none but at exit 0.
        let relay = try RelayProcess(
            driver: driver, launcher: [python.path, "-c", Self.badLauncherProgram, "\(port)", environment.socket, environment.listenFDs],
            ["--bind", "127.0.0.1", "--port", "\(port)"] + twoWorkerArguments + [backend.spec])
        #expect(relay.waitForExit() == 64, "\(relay.standardError)")
        #expect(relay.standardError.contains(environment.message), "\(relay.standardError)")
        #expect(!relay.standardError.contains("socket activation: relaying"), "\(relay.standardError)")
    }

    @Test("a socket-activated relay refuses a takeover (exit 64, restart the service instead) and keeps relaying on systemd's socket", arguments: ioDrivers)
    func takeoverRefused(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        // Stands in for systemd: bound once, no SO_REUSEPORT, held past the relay.
        let held = try UDPSocket.bound(to: SocketAddress(numericHost: "127.0.0.1", port: 0)!)
        let address = held.localAddress
        let relay = try Self.start(on: held, backend: backend, driver: driver)
        let control = TakeoverTests.ControlPath()
        let server = try ControlServer(path: control.path, relay: relay, logger: .init(label: "test"))
        try server.start()
        let result = try RelayProcess.run([
            "--io-backend", driver.rawValue, "--bind", "127.0.0.1", "--port", "\(address.port)", "--threads", "2",
            "--takeover", control.path, backend.spec,
        ])
        #expect(result.status == 64, "\(result.error)")
        #expect(result.error.contains("takeover refused by the running relay (mismatch): this relay runs on sockets systemd passed (socket activation)"),
                "\(result.error)")
        try send((0..<50).map(Self.line), to: address)
        #expect(Set(try collect(from: [backend], expectedLines: 50).lines[0]) == Set((0..<50).map(Self.line)))
        server.stop()
        relay.stop()
        let (counters, failures) = relay.wait()
        #expect(failures.isEmpty)
        #expect(counters[.linesForwarded] == 50)
    }
}
