@testable import RelayKernel
import Testing
@testable import UringRelay

/// TCP ingest listeners in the configuration: `"tcp:ADDR:PORT"` and `{tcp: ADDR:PORT}` among the
/// file's `listeners`, `tcp-port` (`--tcp-port`), `tcp-max-connections`, `tcp-idle-timeout`; each
/// mistake refused with its key path.
@Suite("TCP ingest configuration")
struct TCPIngestConfigTests {
    static let backends = "backends: [127.0.0.1:9001]"

    @Test("both file forms beside UDP and Unix listeners, in order; tcp-port adds one on the first listener's address; the rendered file reads back the same")
    func fileForms() throws {
        let configuration = try ListenerConfigTests.resolved(
            "listeners:\n  - 127.0.0.1:9125\n  - tcp: 127.0.0.1:9126\n  - unix:/run/a.sock\n  - tcp:[::1]:9127\ntcp-port: 9125\n"
                + "tcp-max-connections: 500\ntcp-idle-timeout: 90s\n\(Self.backends)")
        #expect(configuration.listenAddresses.map(\.description) == ["127.0.0.1:9125", "unix:/run/a.sock"])
        #expect(configuration.tcpListenAddresses.map(\.description) == ["127.0.0.1:9125", "127.0.0.1:9126", "[::1]:9127"])
        #expect(configuration.tcpMaxConnections == 500)
        #expect(configuration.tcpIdleTimeoutNanoseconds == 90_000_000_000)
        let rendered = ConfigFile.render(configuration)
        let again = try ListenerConfigTests.resolved(rendered)
        #expect(again.tcpListenAddresses == configuration.tcpListenAddresses, "\(rendered)")
        #expect(again.tcpMaxConnections == 500 && again.tcpIdleTimeoutNanoseconds == 90_000_000_000, "\(rendered)")
    }

    @Test("defaults: no TCP listener, 10 000 connections, 5 minutes idle; the per-worker share rounds up")
    func defaults() throws {
        var configuration = try ListenerConfigTests.resolved(Self.backends)
        #expect(configuration.tcpListenAddresses.isEmpty)
        #expect(configuration.tcpMaxConnections == 10_000)
        #expect(configuration.tcpIdleTimeoutNanoseconds == 300_000_000_000)
        configuration.threads = 3
        #expect(configuration.tcpMaxConnectionsPerWorker == 3_334)
    }

    @Test(
        "mistakes are refused with the key path and the reason",
        arguments: [
            ("listeners: [tcp:127.0.0.1:9125]", "listeners[0]", "the first listener is UDP"),
            ("listeners:\n  - 127.0.0.1:9125\n  - tcp: 127.0.0.1:9126\n    port: 9", "listeners[1]", "tcp: ADDR:PORT alone"),
            ("listeners:\n  - 127.0.0.1:9125\n  - tcp: localhost:9126", "listeners[1].tcp", "not an IPv4 or IPv6 address"),
            ("listeners:\n  - 127.0.0.1:9125\n  - tcp:127.0.0.1", "listeners[1]", "ADDR:PORT"),
            ("listeners: [127.0.0.1:9125, tcp:127.0.0.1:9126, tcp:127.0.0.1:9126]", "listeners", "same TCP address"),
            ("tcp-port: 70000", "tcp-port", "0-65535"),
            ("tcp-max-connections: 0", "tcp-max-connections", "1-1000000"),
            ("tcp-idle-timeout: 1ms", "tcp-idle-timeout", "between 10ms and 24h"),
        ])
    func refused(yaml: String, keyPath: String, reason: String) {
        ListenerConfigTests.expectRefused(yaml + "\n" + Self.backends, keyPath: keyPath, reason: reason)
    }
}
