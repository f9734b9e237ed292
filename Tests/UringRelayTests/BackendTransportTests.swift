@testable import RelayKernel
import Testing
@testable import UringRelay

@Suite("Backend transports: udp:// and tcp:// schemes, --sendproto, routing identity")
struct BackendTransportTests {
    @Test("a scheme sets the transport and nothing else", arguments: [
        ("tcp://10.0.0.1:8125", BackendTransport?.some(.tcp), "10.0.0.1", UInt16(8125), String?.none, Int?.none),
        ("udp://10.0.0.1:8125", .udp, "10.0.0.1", 8125, nil, nil),
        ("TCP://statsd-1:9125:a", .tcp, "statsd-1", 9125, "a", nil),
        ("tcp://[::1]:8125:b=3", .tcp, "::1", 8125, "b", 3),
        ("10.0.0.1:8125=2", nil, "10.0.0.1", 8125, nil, 2),
    ])
    func schemes(_ written: String, _ transport: BackendTransport?, _ host: String, _ port: UInt16, _ instance: String?, _ weight: Int?) throws {
        let backend = try BackendAddress(parsing: written)
        #expect(backend.transport == transport)
        #expect(backend.host == host && backend.port == port && backend.instance == instance && backend.weight == weight)
    }

    @Test("the identity leaves the scheme out; a configuration file renders it back", arguments: [
        ("tcp://10.0.0.1:8125:a", "10.0.0.1:8125:a", "tcp://10.0.0.1:8125:a"),
        ("udp://[::1]:8125", "[::1]:8125", "udp://[::1]:8125"),
        ("10.0.0.1:8125", "10.0.0.1:8125", "10.0.0.1:8125"),
    ])
    func identity(_ written: String, _ identity: String, _ rendered: String) throws {
        let backend = try BackendAddress(parsing: written)
        #expect(backend.description == identity)
        #expect(backend.withScheme == rendered)
    }

    @Test("a bad scheme is refused naming the backend and the scheme", arguments: [
        ("ftp://10.0.0.1:8125", "unknown scheme 'ftp://' (expected udp:// or tcp://)"),
        ("://10.0.0.1:8125", "unknown scheme '://' (expected udp:// or tcp://)"),
        ("tcp://", "expected HOST:PORT[:INSTANCE]"),
        ("tcp://10.0.0.1", "expected HOST:PORT[:INSTANCE]"),
    ])
    func badSchemes(_ written: String, _ reason: String) {
        #expect(throws: ConfigurationError(argument: "backend", value: written, reason: reason)) {
            try BackendAddress(parsing: written)
        }
    }

    @Test("switching a backend's transport moves no series, in every hash mode", arguments: HashMode.allCases)
    func transportMovesNothing(_ mode: HashMode) throws {
        let plain = try ["10.1.0.1:8125", "10.1.0.2:8125:b", "10.1.0.3:8126=2", "10.1.0.4:8125"].map { try BackendAddress(parsing: $0) }
        let mixed = try ["tcp://10.1.0.1:8125", "10.1.0.2:8125:b", "tcp://10.1.0.3:8126=2", "udp://10.1.0.4:8125"].map { try BackendAddress(parsing: $0) }
        #expect(mixed.map(\.transport) != plain.map(\.transport))
        let before = Router(backends: plain, hashMode: mode)
        let after = Router(backends: mixed, hashMode: mode)
        var moved = 0
        for index in 0..<20_000 where before.backend(forName: "series.\(index).value") != after.backend(forName: "series.\(index).value") {
            moved += 1
        }
        #expect(moved == 0)
        let addresses = (1...4).map { SocketAddress(numericHost: "10.1.0.\($0)", port: 8125)! }
        var plainPool = BackendPool(backends: plain, addresses: addresses, policy: .rehash)
        var mixedPool = BackendPool(backends: mixed, addresses: addresses, policy: .rehash)
        plainPool.hashMode = mode
        mixedPool.hashMode = mode
        #expect(plainPool.identities == mixedPool.identities)
        #expect(plainPool.ringFingerprint == mixedPool.ringFingerprint)
    }

    @Test("--sendproto takes UDP or TCP in any case; the backends without a scheme follow it", arguments: [
        ("UDP", BackendTransport.udp), ("TCP", .tcp), ("tcp", .tcp), ("Udp", .udp),
    ])
    func sendProtocol(_ text: String, _ transport: BackendTransport) throws {
        var file = ConfigFile()
        file.sendproto = text
        var configuration = RelayConfiguration(backends: [])
        try file.apply(to: &configuration)
        #expect(configuration.sendProtocol == transport)
    }

    @Test("--sendproto and --tcp-backend-queue refuse what they cannot take", arguments: [
        ("sendproto", "SCTP"), ("tcp-backend-queue", "1KiB"), ("tcp-backend-queue", "2GiB"), ("tcp-backend-queue", "lots"),
    ])
    func badValues(_ key: String, _ value: String) {
        var file = ConfigFile()
        if key == "sendproto" { file.sendproto = value } else { file.tcpBackendQueue = value }
        var configuration = RelayConfiguration(backends: [])
        #expect(throws: ConfigurationError.self) { try file.apply(to: &configuration) }
    }

    @Test("--tcp-backend-queue takes a size; the default is 4 MiB")
    func queueSize() throws {
        #expect(RelayConfiguration(backends: []).tcpBackendQueueBytes == 4 << 20)
        var file = ConfigFile()
        file.tcpBackendQueue = "256KiB"
        var configuration = RelayConfiguration(backends: [])
        try file.apply(to: &configuration)
        #expect(configuration.tcpBackendQueueBytes == 256 << 10)
    }
}
