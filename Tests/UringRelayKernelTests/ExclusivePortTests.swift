@testable import RelayKernel
import Foundation
import Glibc
import Testing
@testable import UringRelay

@Suite("One relay per port unless shared on purpose", .serialized, .timeLimit(.minutes(1)), .onOwnThread)
struct ExclusivePortTests {
    static func configuration(backend: TestBackend, port: UInt16, driver: IOBackendChoice) throws -> RelayConfiguration {
        var configuration = RelayConfiguration(backends: [try BackendAddress(parsing: backend.spec)])
        configuration.bindHost = "127.0.0.1"
        configuration.port = port
        configuration.threads = 1
        configuration.ioBackend = driver
        return configuration
    }

    @Test("a second relay on a port a relay holds refuses to start, naming the address; with --reuseport-group it joins", arguments: ioDrivers)
    func secondRelayRefused(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let first = try InProcessRelay(backends: [backend], driver: driver)
        let port = first.address.port
        let second = try Relay(configuration: try Self.configuration(backend: backend, port: port, driver: driver), logger: .init(label: "test"))
        #expect {
            _ = try second.start()
        } throws: { error in
            let text = "\(error)"
            return text.contains("bind udp 127.0.0.1:\(port)") && text.contains("Address already in use")
                && text.contains("--reuseport-group")
        }
        var sharing = try Self.configuration(backend: backend, port: port, driver: driver)
        sharing.reusePortGroup = true
        let joined = try Relay(configuration: sharing, logger: .init(label: "test"))
        #expect(try joined.start().listen.port == port)
        #expect(joined.driver == driver)
        joined.stop()
        #expect(joined.wait().failures.isEmpty)
        _ = first.stop()
    }

    @Test("a stray SO_REUSEPORT socket on the port makes the relay refuse to start", arguments: ioDrivers)
    func straySocketRefused(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let stray = try UDPSocket.bound(to: SocketAddress(numericHost: "127.0.0.1", port: 0)!, reusePort: true)
        let relay = try Relay(
            configuration: try Self.configuration(backend: backend, port: stray.localAddress.port, driver: driver),
            logger: .init(label: "test"))
        #expect(throws: SystemCallError.self) { _ = try relay.start() }
    }
}

@Suite("The executable refuses a shared port", .serialized, .timeLimit(.minutes(1)), .onOwnThread)
struct ExclusivePortCommandTests {
    @Test("a second statsrelay on the port exits 71 naming the address; with --reuseport-group it starts", arguments: ioDrivers)
    func secondProcessRefused(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let first = try RelayProcess(driver: driver, ["--bind", "127.0.0.1", "--port", "0", "--threads", "1", backend.spec])
        let port = try first.listenAddress().port
        let second = try RelayProcess.run(["--io-backend", driver.rawValue, "--bind", "127.0.0.1", "--port", "\(port)", "--threads", "1", backend.spec])
        #expect(second.status == 71)
        #expect(second.error.contains("bind udp 127.0.0.1:\(port): Address already in use (errno 98)"), "\(second.error)")
        #expect(second.error.contains("--reuseport-group"))
        let sharing = try RelayProcess(driver: driver, ["--bind", "127.0.0.1", "--port", "\(port)", "--threads", "1", "--reuseport-group", backend.spec])
        #expect(try sharing.listenAddress().port == port)
        sharing.signal(SIGTERM)
        #expect(sharing.waitForExit() == 0)
        first.signal(SIGTERM)
        #expect(first.waitForExit() == 0)
    }
}
