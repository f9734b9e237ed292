import Foundation
@testable import RelayKernel
import Testing
@testable import UringRelay

/// The interface index of `name` as sysfs gives it (not through the code under test).
private func sysfsIndex(of name: String) throws -> UInt32 {
    let text = try String(contentsOfFile: "/sys/class/net/\(name)/ifindex", encoding: .utf8)
    return try #require(UInt32(text.trimmingCharacters(in: .whitespacesAndNewlines)))
}

/// A listener or backend address written as the tests write them.
private func address(_ host: String, _ port: UInt16) -> SocketAddress { SocketAddress(numericHost: host, port: port)! }

@Suite("Backend addresses: zones, spellings, unusable addresses, self-loops and duplicates")
struct BackendAddressTests {
    @Test("an IPv6 zone is taken by interface name or index, and shown by name")
    func zones() throws {
        let lo = try sysfsIndex(of: "lo")
        for written in ["fe80::1%lo", "fe80::1%\(lo)"] {
            let backend = try BackendAddress(parsing: "[\(written)]:8125")
            #expect(backend.host == written)
            let parsed = try #require(SocketAddress(numericHost: backend.host, port: backend.port))
            #expect(parsed.scopeID == lo)
            #expect(parsed.description == "[fe80::1%lo]:8125")
        }
    }

    @Test("a zone that is not an interface, or one outside brackets, is refused with the reason", arguments: [
        ("[fe80::1%no-such-if]:8125", "no interface 'no-such-if' on this host (after '%')"),
        ("[fe80::1%]:8125", "empty interface after '%'"),
        ("[127.0.0.1%lo]:8125", "'127.0.0.1' is not an IPv6 address"),
        ("statsd%lo:8125", "'%' names an IPv6 address's interface, only inside brackets: [ADDRESS%INTERFACE]:PORT"),
    ])
    func badZones(_ text: String, _ reason: String) {
        #expect(throws: ConfigurationError(argument: "backend", value: text, reason: reason)) {
            try BackendAddress(parsing: text)
        }
    }

    @Test("spellings of one address have one canonical form", arguments: [
        ("::ffff:127.0.0.1", "127.0.0.1"),
        ("::ffff:10.1.2.3", "10.1.2.3"),
        ("127.0.0.1", "127.0.0.1"),
        ("::1%lo", "::1"),
        ("2001:db8::5%lo", "2001:db8::5"),
        ("fe80::1%lo", "fe80::1%lo"),
        ("::1", "::1"),
    ])
    func canonicalForms(_ written: String, _ canonical: String) {
        #expect(address(written, 9).canonical == address(canonical, 9))
        #expect(address(written, 9).canonical.host == canonical)
    }

    @Test("unusable addresses are refused with the reason", arguments: [
        ("0.0.0.0", "the unspecified address 0.0.0.0 is not a destination"),
        ("::", "the unspecified address :: is not a destination"),
        ("224.0.0.1", "224.0.0.1 is a multicast group"),
        ("239.1.2.3", "239.1.2.3 is a multicast group"),
        ("ff02::1%lo", "ff02::1 is a multicast group"),
        ("ff05::2", "ff05::2 is a multicast group"),
        ("255.255.255.255", "255.255.255.255 is the broadcast address: a metric must go to exactly one statsd"),
        ("fe80::1", "fe80::1 is link-local and needs its interface: write [fe80::1%INTERFACE]:8125"),
        ("::ffff:0.0.0.0", "the unspecified address 0.0.0.0 is not a destination"),
    ])
    func unusable(_ host: String, _ reason: String) throws {
        let refusal = try #require(BackendAddressCheck.unusable(address(host, 8125)))
        #expect(refusal.hasPrefix(reason), "\(refusal)")
    }

    @Test("unicast addresses are usable", arguments: ["127.0.0.1", "127.0.0.2", "::1", "10.20.30.40", "169.254.1.1", "2001:db8::1"])
    func usable(_ host: String) {
        #expect(BackendAddressCheck.unusable(address(host, 8125)) == nil)
    }

    /// Whether an IPv6 wildcard socket takes IPv4 here, from the sysctl (not the code under test).
    static var dualStack: Bool {
        (try? String(contentsOfFile: "/proc/sys/net/ipv6/bindv6only", encoding: .utf8))?
            .trimmingCharacters(in: .whitespacesAndNewlines) == "0"
    }

    @Test("a listener is reached by its own address, and a wildcard one by every loopback address, on its port only", arguments: [
        ("0.0.0.0", "127.0.0.1", true),
        ("0.0.0.0", "127.9.8.7", true),
        ("0.0.0.0", "::ffff:127.0.0.1", true),
        ("0.0.0.0", "::1", false),
        ("127.0.0.1", "127.0.0.1", true),
        ("127.0.0.1", "::ffff:127.0.0.1", true),
        ("127.0.0.1", "127.0.0.2", false),
        ("127.0.0.2", "127.0.0.1", false),
        ("::", "::1", true),
        ("::1", "::1", true),
        ("::1", "127.0.0.1", false),
        ("0.0.0.0", "198.51.100.7", false),  // TEST-NET-2: never a host's own address
    ])
    func reached(_ listener: String, _ backend: String, _ reaches: Bool) {
        let bound = address(listener, 41125)
        #expect((BackendAddressCheck.reachedListener(from: address(backend, 41125), listeners: [bound]) != nil) == reaches)
        #expect(BackendAddressCheck.reachedListener(from: address(backend, 41126), listeners: [bound]) == nil)
    }

    @Test("an IPv6 wildcard listener is reached over IPv4 exactly when the host's sockets are dual-stack")
    func ipv6WildcardTakesIPv4() {
        let reached = BackendAddressCheck.reachedListener(from: address("127.0.0.1", 41125), listeners: [address("::", 41125)])
        #expect((reached != nil) == Self.dualStack)
    }

    @Test("a backend reaching the listener is refused at start, naming both, whatever its spelling", arguments: [
        "127.0.0.1", "127.0.0.3", "::ffff:127.0.0.1",
    ])
    func selfLoopRefused(_ host: String) throws {
        let written = host.contains(":") ? "[\(host)]:41125" : "\(host):41125"
        let backends = [try BackendAddress(parsing: "127.0.0.1:42001"), try BackendAddress(parsing: written)]
        let addresses = [address("127.0.0.1", 42001), address(host, 41125).canonical]
        let error = try #require(throws: ConfigurationError.self) {
            try BackendAddressCheck.verify(backends: backends, addresses: addresses, listeners: [address("0.0.0.0", 41125)])
        }
        #expect(error.argument == "backend")
        #expect(error.value == written)
        #expect(error.reason.hasPrefix("reaches this relay's own listener 0.0.0.0:41125"), "\(error.reason)")
    }

    @Test("a backend loops only through a listener of its own transport: refused there, accepted on the other's port",
          arguments: [
              // (backend as written, --sendproto, the listener on its port is TCP, refused)
              ("127.0.0.1:41125", BackendTransport.udp, false, true),
              ("127.0.0.1:41125", BackendTransport.udp, true, false),
              ("udp://127.0.0.1:41125", BackendTransport.tcp, false, true),
              ("udp://127.0.0.1:41125", BackendTransport.tcp, true, false),
              ("tcp://127.0.0.1:41125", BackendTransport.udp, true, true),
              ("tcp://127.0.0.1:41125", BackendTransport.udp, false, false),
              ("127.0.0.1:41125", BackendTransport.tcp, true, true),
              ("127.0.0.1:41125", BackendTransport.tcp, false, false),
          ])
    func loopByTransport(_ written: String, _ sendProtocol: BackendTransport, _ tcpListener: Bool, _ refused: Bool) throws {
        let backends = [try BackendAddress(parsing: written)]
        let addresses = [address("127.0.0.1", 41125)]
        // The other transport listens on another port, so only the transport decides.
        let same = address("0.0.0.0", 41125)
        let other = address("0.0.0.0", 41126)
        let own = BackendAddressCheck.OwnListeners(udp: [tcpListener ? other : same], tcp: [tcpListener ? same : other])
        let atStart = Result { () throws(ConfigurationError) in
            try BackendAddressCheck.verify(
                backends: backends, addresses: addresses, listeners: own.udp, tcpListeners: own.tcp, sendProtocol: sendProtocol)
        }
        // What a DNS refresh checks a backend's new address with.
        let atRefresh = BackendAddressCheck.refusal(
            of: addresses[0], for: 0, backends: backends, addresses: addresses, listeners: own, sendProtocol: sendProtocol,
            earlierOnly: false)
        #expect((atRefresh != nil) == refused, "\(atRefresh ?? "accepted")")
        switch atStart {
        case .success:
            #expect(!refused)
        case .failure(let error):
            #expect(refused, "\(error.reason)")
            let listener = tcpListener ? "TCP listener tcp:0.0.0.0:41125" : "listener 0.0.0.0:41125"
            #expect(error.reason.hasPrefix("reaches this relay's own \(listener):"), "\(error.reason)")
            #expect(error.reason == atRefresh)
        }
    }

    @Test("a backend whose health check would connect to the relay's own TCP listener is refused; one checking elsewhere is not",
          arguments: [
              // (health check, --health-check-port, the backend's own health-check-port, refused)
              (HealthCheckMode.tcp, UInt16?.none, UInt16?.none, true),
              (.tcp, 41127, nil, false),
              (.tcp, 41127, 41125, true),
              (.statsdAdmin, nil, nil, false),
              (.statsdAdmin, 41125, nil, true),
              (.none, nil, nil, false),
          ])
    func healthCheckAtOwnListener(_ mode: HealthCheckMode, _ checkPort: UInt16?, _ ownCheckPort: UInt16?, _ refused: Bool) throws {
        // A UDP statsd on 127.0.0.1:41125; the relay takes TCP on 0.0.0.0:41125 (and UDP elsewhere).
        var backend = try BackendAddress(parsing: "127.0.0.1:41125")
        backend.healthCheckPort = ownCheckPort
        let verified = Result { () throws(ConfigurationError) in
            try BackendAddressCheck.verify(
                backends: [backend], addresses: [address("127.0.0.1", 41125)], listeners: [address("0.0.0.0", 41126)],
                tcpListeners: [address("0.0.0.0", 41125)], healthCheck: (mode, checkPort))
        }
        switch verified {
        case .success:
            #expect(!refused)
        case .failure(let error):
            #expect(refused, "\(error.reason)")
            #expect(error.reason.hasPrefix(
                "its health check (--health-check \(mode.rawValue)) would connect to this relay's own TCP listener tcp:0.0.0.0:41125"),
                "\(error.reason)")
        }
        // What a DNS refresh checks a backend's new address with.
        let atRefresh = BackendAddressCheck.refusal(
            of: address("127.0.0.1", 41125), for: 0, backends: [backend], addresses: [address("127.0.0.1", 41125)],
            listeners: .init(udp: [address("0.0.0.0", 41126)], tcp: [address("0.0.0.0", 41125)]), healthCheck: (mode, checkPort),
            earlierOnly: false)
        #expect((atRefresh != nil) == refused, "\(atRefresh ?? "accepted")")
    }

    @Test("a listener on port 0 (not bound yet) is not compared")
    func unboundListener() throws {
        let backends = [try BackendAddress(parsing: "127.0.0.1:41125")]
        try BackendAddressCheck.verify(backends: backends, addresses: [address("127.0.0.1", 41125)], listeners: [address("0.0.0.0", 0)])
    }

    @Test("two spellings of one address are refused as duplicates once resolved, naming both", arguments: [
        "127.1:8125", "0x7f000001:8125", "localhost:8125", "[::ffff:127.0.0.1]:8125", "2130706433:8125",
    ])
    func resolvedDuplicates(_ spelling: String) throws {
        // Resolved by the system resolver: `127.1`, `0x7f000001` and `2130706433` through
        // inet_aton, `localhost` through /etc/hosts; none needs DNS.
        let backends = [try BackendAddress(parsing: "127.0.0.1:8125"), try BackendAddress(parsing: spelling)]
        let addresses = try BackendLookup(backends: backends, limitNanoseconds: 5_000_000_000).wait()
        #expect(addresses[1] == address("127.0.0.1", 8125))
        let error = try #require(throws: ConfigurationError.self) {
            try BackendAddressCheck.verify(backends: backends, addresses: addresses, listeners: [])
        }
        #expect(error.value == spelling)
        #expect(error.reason == "same address as backend 1 ('127.0.0.1:8125'): both are 127.0.0.1:8125; give each backend once")
    }

    @Test("one host on two ports, or two hosts on one port, are two backends")
    func distinct() throws {
        let backends = try ["127.0.0.1:8125", "127.0.0.1:8126", "127.0.0.2:8125"].map { try BackendAddress(parsing: $0) }
        let addresses = [address("127.0.0.1", 8125), address("127.0.0.1", 8126), address("127.0.0.2", 8125)]
        try BackendAddressCheck.verify(backends: backends, addresses: addresses, listeners: [address("0.0.0.0", 9999)])
    }

    @Test("choosing from a name's answers keeps the current address while listed, else takes the first, canonical")
    func choose() {
        let first = address("127.0.0.5", 9)
        let second = address("127.0.0.6", 9)
        #expect(BackendResolver.choose(from: [first, second]) == first)
        #expect(BackendResolver.choose(from: [first, second], keeping: second) == second)
        #expect(BackendResolver.choose(from: [first], keeping: second) == first)
        #expect(BackendResolver.choose(from: [address("::ffff:127.0.0.7", 9)]) == address("127.0.0.7", 9))
        #expect(BackendResolver.choose(from: []) == nil)
    }
}
