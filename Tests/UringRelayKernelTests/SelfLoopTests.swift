@testable import RelayKernel
import Foundation
import Glibc
import Testing
@testable import UringRelay

/// `statsrelay` refusing, at start, backends it cannot have: one that reaches its own listener
/// (it would relay every line to itself forever), two backends at one address, and addresses
/// that are not one statsd. Whatever the spelling, the addresses are compared resolved.
///
/// These relays stop before any io driver starts, so the tests are not run per driver: each
/// checks instead that the relay never listened.
@Suite("statsrelay refuses backends it cannot have, whatever their spelling", .timeLimit(.minutes(1)), .onOwnThread)
struct SelfLoopTests {
    /// Runs the relay on port `port` (never bound: it must refuse first) and checks exit 64 and
    /// the message.
    static func expectRefusal(_ arguments: [String], message: String) throws {
        let result = try RelayProcess.run(arguments)
        #expect(result.status == 64, "\(result.error)")
        #expect(result.error.contains(message), "\(result.error)")
        #expect(!result.error.contains("listening on"))
    }

    @Test("a backend reaching the relay's own listener exits 64 naming both", arguments: [
        ("0.0.0.0", "127.0.0.1"), ("0.0.0.0", "localhost"), ("0.0.0.0", "127.1"), ("0.0.0.0", "0x7f000001"),
        ("0.0.0.0", "[::ffff:127.0.0.1]"), ("0.0.0.0", "127.0.0.9"), ("127.0.0.1", "127.0.0.1"), ("127.0.0.1", "127.1"),
        ("127.0.0.1", "localhost"),
    ])
    func selfLoop(bind: String, host: String) throws {
        let port = try unusedPort()
        let backend = "\(host):\(port)"
        try Self.expectRefusal(
            ["--bind", bind, "--port", "\(port)", "127.0.0.1:\(port == 65535 ? 1 : port + 1)", backend],
            message: "invalid backend '\(backend)': reaches this relay's own listener \(bind):\(port)")
    }

    @Test("over IPv6: [::1] reaches a relay on [::] or [::1]", arguments: ["::", "::1"])
    func selfLoopIPv6(bind: String) throws {
        guard ipv6LoopbackAvailable else { try Test.cancel("no IPv6 loopback on this host") }
        let port = try unusedPort()
        try Self.expectRefusal(
            ["--bind", bind, "--port", "\(port)", "[::1]:\(port)"],
            message: "invalid backend '[::1]:\(port)': reaches this relay's own listener [\(bind)]:\(port)")
    }

    @Test("a relay on one loopback address relays to another on the same port: no loop, no refusal", arguments: ioDrivers)
    func otherLoopbackAddress(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let port = try unusedPort()
        let backend = try UDPSocket.bound(to: SocketAddress(numericHost: "127.0.0.2", port: port)!)
        let relay = try RelayProcess(driver: driver, ["--bind", "127.0.0.1", "--port", "\(port)", "--threads", "1", "127.0.0.2:\(port)"])
        defer { _ = relay.waitForExit(seconds: 5) }
        let listen = try relay.listenAddress()
        #expect(relay.standardError.contains("io_backend=\(driver.rawValue)"))
        try send(["same.port:1|c"], to: listen)
        let datagram = try backend.receive(timeoutMilliseconds: 5_000)
        #expect(datagram.map { String(decoding: $0.bytes, as: UTF8.self) } == "same.port:1|c\n")
        relay.signal(SIGTERM)
        #expect(relay.waitForExit() == 0)
        #expect(relay.counter("statsrelay.lines_received") == 1)
    }

    @Test("two spellings of one backend exit 64 naming both", arguments: ["127.1", "0x7f000001", "localhost", "[::ffff:127.0.0.1]"])
    func duplicates(spelling: String) throws {
        try Self.expectRefusal(
            ["--port", "\(try unusedPort())", "127.0.0.1:9000", "\(spelling):9000"],
            message: "invalid backend '\(spelling):9000': same ")
    }

    @Test("addresses that are not one statsd exit 64 with the reason", arguments: [
        ("255.255.255.255:9000", "255.255.255.255 is the broadcast address"),
        ("224.0.0.1:9000", "224.0.0.1 is a multicast group"),
        ("[ff02::1%lo]:9000", "ff02::1 is a multicast group"),
        ("[fe80::1]:9000", "fe80::1 is link-local and needs its interface: write [fe80::1%INTERFACE]:9000"),
        ("0.0.0.0:9000", "the unspecified address 0.0.0.0 is not a destination"),
    ])
    func unusable(backend: String, reason: String) throws {
        try Self.expectRefusal(["--port", "\(try unusedPort())", backend], message: "invalid backend '\(backend)': \(reason)")
    }

    @Test("a name that does not resolve exits 75, the resolver's fault, not 64")
    func unresolvable() throws {
        let result = try RelayProcess.run(["--port", "\(try unusedPort())", "no-such-host.invalid:8125"])
        #expect(result.status == 75, "\(result.error)")
        let line = try #require(result.error.split(separator: "\n").last.map(String.init))
        #expect(line.hasPrefix("resolve backend no-such-host.invalid:8125: "), "\(line)")
        #expect(line.hasSuffix(" (resolver)"), "\(line)")
    }

    /// A namespace with a veth pair whose one end has `10.9.9.1/24` (broadcast `10.9.9.255`).
    static let network = NetworkNamespace(commands: [
        ["ip", "link", "set", "lo", "up"],
        ["ip", "link", "add", "x0", "type", "veth", "peer", "name", "x1"],
        ["ip", "addr", "add", "10.9.9.1/24", "brd", "+", "dev", "x0"],
        ["ip", "link", "set", "x0", "up"],
        ["ip", "link", "set", "x1", "up"],
    ])

    @Test("in a namespace: an interface's address reaches a wildcard listener, and its network's broadcast address is refused", arguments: [
        ("10.9.9.1:PORT", "reaches this relay's own listener 0.0.0.0:PORT"),
        ("10.9.9.255:9000", "10.9.9.255 is the broadcast address of a network this host is on"),
    ])
    func interfaceAddresses(backend: String, reason: String) throws {
        let python = try Self.network.requireAvailable()
        let port = "\(try unusedPort())"
        let written = backend.replacingOccurrences(of: "PORT", with: port)
        // It exits before any driver is chosen: `.auto` asserts none.
        let relay = try RelayProcess(driver: .auto, launcher: Self.network.launcher(python: python), ["--port", port, written])
        #expect(relay.waitForExit() == 64, "\(relay.standardError)")
        #expect(relay.standardError.contains("invalid backend '\(written)': \(reason.replacingOccurrences(of: "PORT", with: port))"),
                "\(relay.standardError)")
    }
}
