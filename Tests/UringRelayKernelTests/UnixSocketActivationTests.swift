@testable import RelayKernel
import Foundation
import Glibc
import Testing
@testable import UringRelay

/// Socket activation of a Unix datagram listener (`ListenDatagram=/run/…` in the socket unit):
/// systemd's socket, bound to a `--unix-socket` path, read by every worker, and left to systemd
/// (its file too) when the relay stops.
@Suite("Socket activation of a Unix datagram listener", .serialized, .timeLimit(.minutes(1)), .onOwnThread)
struct UnixSocketActivationTests {
    /// A configuration of two workers with a UDP listener on `udp`'s port and a Unix one at `path`.
    static func configuration(udp: SocketAddress, path: String, backend: TestBackend, driver: IOBackendChoice) throws -> RelayConfiguration {
        var configuration = RelayConfiguration(backends: [try BackendAddress(parsing: backend.spec)])
        configuration.bindHost = "127.0.0.1"
        configuration.port = udp.port
        configuration.additionalListeners = [SocketAddress(unixPath: path)!]
        configuration.threads = 2
        configuration.cpus = [nextTestCPU(), nextTestCPU()]
        configuration.ioBackend = driver
        return configuration
    }

    /// A relay on `udp` and `unix`, passed as systemd passes them.
    static func start(udp: borrowing UDPSocket, unix: borrowing UDPSocket, path: String, backend: TestBackend, driver: IOBackendChoice) throws -> Relay {
        let configuration = try Self.configuration(udp: udp.localAddress, path: path, backend: backend, driver: driver)
        // systemd passes them in the socket unit's order; the Unix one first here, so the
        // match is by address, not by position.
        let passed = [(socket: SocketBox(try unix.duplicate()), name: "unix"), (socket: SocketBox(try udp.duplicate()), name: "udp")]
        let inherited = try SocketActivation.listeners(passed, configuration: configuration)
        #expect(inherited.addresses == [udp.localAddress, SocketAddress(unixPath: path)!])
        #expect(inherited.sharedByWorkers == [true, true])
        let relay = try Relay(configuration: configuration, logger: .init(label: "test"))
        _ = try relay.start(inheriting: inherited)
        #expect(relay.driver == driverExpected(for: driver))
        return relay
    }

    @Test("a Unix datagram socket systemd bound to the --unix-socket path is read by every worker; at stop its file stays, what arrives then waits in it and the next relay relays it, once", arguments: ioDrivers)
    func unixSocketActivated(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let path = temporaryUnixPath("activated")
        defer { unlink(path) }
        let backend = try TestBackend()
        // Stand in for systemd: bound once, held across both relays.
        let udp = try UDPSocket.bound(to: SocketAddress(numericHost: "127.0.0.1", port: 0)!)
        let unix = try UDPSocket.listening(unixPath: path, mode: 0o660)

        let first = try Self.start(udp: udp, unix: unix, path: path, backend: backend, driver: driver)
        let lines = (0..<200).map { "unix.activated.\($0):1|c" }
        try sendUnix(lines, to: path)
        #expect(try collect(from: [backend], expectedLines: lines.count).lines[0].sorted() == lines.sorted())
        first.stop()
        let (counters, failures) = first.wait()
        #expect(failures.isEmpty)
        #expect(counters[.datagramsReceived, listener: "unixgram:\(path)"] == UInt64(lines.count))
        #expect(counters[.datagramsDroppedAtExit] == 0)
        #expect(fileExists(path), "the socket file is systemd's: the relay leaves it at exit")

        // No relay runs: the socket queues what is sent to it (fewer than
        // net.unix.max_dgram_qlen's default 10, so the blocking sends do not wait).
        let queued = (0..<8).map { "unix.queued.\($0):1|c" }
        try sendUnix(queued, to: path)
        let second = try Self.start(udp: udp, unix: unix, path: path, backend: backend, driver: driver)
        #expect(try collect(from: [backend], expectedLines: queued.count).lines[0].sorted() == queued.sorted())
        second.stop()
        let (after, secondFailures) = second.wait()
        #expect(secondFailures.isEmpty)
        #expect(after[.linesForwarded] == UInt64(queued.count))
        #expect(fileExists(path))
    }

    /// The candidates a socket-activated relay must refuse: each changes its listeners.
    enum ListenerChange: String, CaseIterable, Sendable {
        case removeUnix, addUDP, addUnix, addTCP
    }

    @Test("a reload that removes or adds a listener of a socket-activated relay is refused and counted: systemd's sockets stay unconnected, the file stays, nothing is bound, relaying goes on; a reload keeping the listeners still applies",
          arguments: ioDrivers, ListenerChange.allCases)
    func reloadChangingListenersRefused(driver: IOBackendChoice, change: ListenerChange) throws {
        try requireDriver(driver)
        let path = temporaryUnixPath("activated-reload")
        let addedPath = temporaryUnixPath("activated-added")
        defer { unlink(path); unlink(addedPath) }
        let backend = try TestBackend()
        // Stand in for systemd: bound once, held past the relay.
        let udp = try UDPSocket.bound(to: SocketAddress(numericHost: "127.0.0.1", port: 0)!)
        let unix = try UDPSocket.listening(unixPath: path, mode: 0o660)
        let relay = try Self.start(udp: udp, unix: unix, path: path, backend: backend, driver: driver)
        let running = relay.configurationInForce
        var candidate = running
        switch change {
        case .removeUnix: candidate.additionalListeners = []
        case .addUDP: candidate.additionalListeners.append(SocketAddress(numericHost: "127.0.0.1", port: try unusedPort())!)
        case .addUnix: candidate.additionalListeners.append(SocketAddress(unixPath: addedPath)!)
        case .addTCP: candidate.tcpListeners = [SocketAddress(numericHost: "127.0.0.1", port: try unusedTCPPort())!]
        }
        let error = try #require(throws: ConfigurationError.self) {
            try relay.reload(to: candidate, addresses: [backend.address])
        }
        #expect(error.argument == "listeners")
        #expect(error.reason.hasPrefix("the listeners come from systemd's socket unit (socket activation)"), "\(error.reason)")
        #expect(relay.reloads.failed == 1)
        #expect(relay.reloads.succeeded == 0)
        #expect(relay.listenAddresses == running.listenAddresses)
        #expect(relay.tcpListenAddresses.isEmpty)
        #expect(udp.peerAddress == nil, "systemd's UDP socket was connected")
        #expect(unix.peerAddress == nil, "systemd's Unix socket was connected")
        #expect(fileExists(path), "systemd's socket file was removed")
        #expect(!fileExists(addedPath), "the refused reload bound a Unix listener")

        // Both of systemd's sockets still relay.
        try send((0..<20).map { "udp.kept.\($0):1|c" }, to: udp.localAddress)
        try sendUnix((0..<8).map { "unix.kept.\($0):1|c" }, to: path)
        #expect(try collect(from: [backend], expectedLines: 28).lines[0].count == 28)

        // A reload that keeps the listeners is not refused.
        var kept = running
        kept.flushIntervalNanoseconds = running.flushIntervalNanoseconds * 2
        #expect(try relay.reload(to: kept, addresses: [backend.address]).workersNotApplied == 0)
        #expect(relay.reloads.succeeded == 1)
        relay.stop()
        let (counters, failures) = relay.wait()
        #expect(failures.isEmpty)
        #expect(counters[.linesForwarded] == 28)
        #expect(udp.peerAddress == nil && unix.peerAddress == nil)
        #expect(fileExists(path))
    }

    @Test("Unix sockets that do not fit are refused naming the socket: another path, a stream socket")
    func mismatch() throws {
        let path = temporaryUnixPath("wanted")
        let backend = try TestBackend()
        let udp = try UDPSocket.bound(to: SocketAddress(numericHost: "127.0.0.1", port: 0)!)
        let configuration = try Self.configuration(udp: udp.localAddress, path: path, backend: backend, driver: .portable)

        let otherPath = temporaryUnixPath("other")
        defer { unlink(otherPath) }
        let other = try UDPSocket.listening(unixPath: otherPath, mode: 0o660)
        #expect {
            _ = try SocketActivation.listeners(
                [(SocketBox(try udp.duplicate()), "udp"), (SocketBox(try other.duplicate()), "other")], configuration: configuration)
        } throws: { error in
            "\(error)".contains("LISTEN_FDS socket 1 (other)") && "\(error)".contains("bound to unix:\(otherPath), which no listener is")
        }

        let streamPath = temporaryUnixPath("stream")
        defer { unlink(streamPath) }
        let stream = try UnixStreamSocket.listening(at: streamPath)
        let adopted = SocketBox(UDPSocket.adopting(descriptor: fcntl(stream.descriptor, F_DUPFD_CLOEXEC, 0)))
        #expect {
            _ = try SocketActivation.listeners(
                [(SocketBox(try udp.duplicate()), "udp"), (adopted, "stream")], configuration: configuration)
        } throws: { error in
            "\(error)".contains("LISTEN_FDS socket 1 (stream)") && "\(error)".contains("not a datagram socket")
        }

        // The Unix listener without its socket: named, with what was expected.
        #expect {
            _ = try SocketActivation.listeners([(SocketBox(try udp.duplicate()), "udp")], configuration: configuration)
        } throws: { error in
            "\(error)".contains("unix:\(path)") && "\(error)".contains("0 sockets")
        }
    }
}
