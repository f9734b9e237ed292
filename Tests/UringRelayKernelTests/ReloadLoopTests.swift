@testable import RelayKernel
import Testing
@testable import UringRelay

/// A reload never lets a backend, or the mirror, reach one of the relay's own listeners: the
/// check follows how the workers send (the running `--sendproto`, a restart key) and how the
/// next start would (the file's), and covers the mirror, which a reload cannot change but whose
/// address a listener it adds may take.
@Suite("reload: no backend or mirror loops back to the relay", .serialized, .timeLimit(.minutes(1)), .onOwnThread)
struct ReloadLoopTests {
    @Test("a schemeless backend at the relay's TCP listener is refused when either the running or the file's --sendproto is TCP; nothing changes",
          arguments: ioDrivers, [(BackendTransport.tcp, BackendTransport.udp), (.udp, .tcp)])
    func schemelessBackendBySendProtocol(driver: IOBackendChoice, protocols: (running: BackendTransport, file: BackendTransport)) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let port = try unusedTCPPort()
        let relay = try InProcessRelay(backends: [], driver: driver) { configuration in
            configuration.backends = [try! BackendAddress(parsing: "udp://" + backend.spec)]
            configuration.sendProtocol = protocols.running
            configuration.tcpListeners = [SocketAddress(numericHost: "127.0.0.1", port: port)!]
        }
        let before = relay.relay.configurationInForce
        var candidate = before
        candidate.sendProtocol = protocols.file
        candidate.backends.append(try BackendAddress(parsing: "127.0.0.1:\(port)"))
        let error = try #require(throws: ConfigurationError.self) {
            try relay.relay.reload(to: candidate, addresses: [backend.address, SocketAddress(numericHost: "127.0.0.1", port: port)!])
        }
        #expect(error.argument == "backend")
        #expect(error.reason.hasPrefix("reaches this relay's own TCP listener tcp:127.0.0.1:\(port):"), "\(error.reason)")
        #expect(relay.relay.configurationInForce.backends == before.backends, "the refused reload changed the pool")
        _ = relay.stop()
    }

    @Test("a reload adding a TCP listener at the mirror's address is refused naming --mirror; the listener is not opened",
          arguments: ioDrivers)
    func listenerAtTheMirror(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        // Nothing listens there: the mirror's connection is refused, which no assertion reads.
        let port = try unusedTCPPort()
        let relay = try InProcessRelay(backends: [backend], driver: driver) { configuration in
            configuration.mirror = [try! BackendAddress(parsing: "tcp://127.0.0.1:\(port)")]
        }
        var candidate = relay.relay.configurationInForce
        candidate.tcpListeners = [SocketAddress(numericHost: "127.0.0.1", port: port)!]
        let error = try #require(throws: ConfigurationError.self) {
            try relay.relay.reload(to: candidate, addresses: [backend.address])
        }
        #expect(error.argument == "--mirror")
        #expect(error.value == "tcp://127.0.0.1:\(port)")
        #expect(error.reason.hasPrefix("reaches this relay's own TCP listener tcp:127.0.0.1:\(port):"), "\(error.reason)")
        #expect(relay.relay.tcpListenAddresses.isEmpty, "the refused reload opened the listener")
        _ = relay.stop()
    }

    @Test("a reload turning on a tcp health check that would connect to the relay's own TCP listener is refused; the checks stay off",
          arguments: ioDrivers)
    func healthCheckAtOwnListener(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        // A statsd on UDP 127.0.0.1:P (nothing is sent to it here); the relay takes TCP on P.
        let port = try unusedTCPPort()
        let relay = try InProcessRelay(backends: [], driver: driver) { configuration in
            configuration.backends = [try! BackendAddress(parsing: "127.0.0.1:\(port)")]
            configuration.tcpListeners = [SocketAddress(numericHost: "127.0.0.1", port: port)!]
        }
        var candidate = relay.relay.configurationInForce
        candidate.healthCheck = .tcp
        let error = try #require(throws: ConfigurationError.self) {
            try relay.relay.reload(to: candidate, addresses: [SocketAddress(numericHost: "127.0.0.1", port: port)!])
        }
        #expect(error.reason.hasPrefix("its health check (--health-check tcp) would connect to this relay's own TCP listener tcp:127.0.0.1:\(port)"),
                "\(error.reason)")
        #expect(relay.relay.configurationInForce.healthCheck == HealthCheckMode.none)
        _ = relay.stop()
    }
}
