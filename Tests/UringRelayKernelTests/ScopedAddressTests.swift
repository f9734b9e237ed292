@testable import RelayKernel
import Foundation
import Glibc
import Testing
@testable import UringRelay

/// A backend at an IPv6 link-local address, which needs its interface (`[fe80::1%x0]:PORT`):
/// in a network namespace with a veth pair whose one end has `fe80::1` (no duplicate address
/// detection, so it is usable at once).
@Suite("Link-local IPv6 backends with their interface", .timeLimit(.minutes(1)), .onOwnThread)
struct ScopedAddressTests {
    static let network = NetworkNamespace(commands: [
        ["ip", "link", "set", "lo", "up"],
        ["ip", "link", "add", "x0", "type", "veth", "peer", "name", "x1"],
        ["ip", "addr", "add", "fe80::1/64", "dev", "x0", "nodad"],
        ["ip", "link", "set", "x0", "up"],
        ["ip", "link", "set", "x1", "up"],
    ])

    @Test("[fe80::1%x0]:PORT receives every line, and the exit report counts them sent to that backend", arguments: ioDrivers)
    func relaysToScopedBackend(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let python = try Self.network.requireAvailable()
        let backendPort = try unusedPort()
        let backendSpec = "[fe80::1%x0]:\(backendPort)"
        let relay = try RelayProcess(
            driver: driver, launcher: Self.network.launcher(python: python),
            ["--bind", "::1", "--port", "0", "--threads", "1", "--flush-interval", "1ms", backendSpec])
        defer { _ = relay.waitForExit(seconds: 5) }
        let listenPort = try relay.listenAddress().port
        #expect(relay.standardError.contains("io_backend=\(driver.rawValue)"), "\(relay.standardError)")
        // The sink and the sender live in the relay's namespace, where x0 exists.
        let (backend, sender) = try NetworkNamespace.sockets(of: relay.process.processIdentifier) {
            (SocketBox(try UDPSocket.bound(to: SocketAddress(numericHost: "fe80::1%x0", port: backendPort)!)),
             SocketBox(try UDPSocket.bound(to: SocketAddress(numericHost: "::1", port: 0)!)))
        }
        let listen = SocketAddress(numericHost: "::1", port: listenPort)!
        let lines = (0..<50).map { "scoped.\($0):1|c" }
        for line in lines { try sender.socket.send(Array(line.utf8), to: listen) }
        var received: [String] = []
        // Bounded: 50 lines, each wait at most two seconds.
        while received.count < lines.count, let datagram = try backend.socket.receive(timeoutMilliseconds: 2_000) {
            received += String(decoding: datagram.bytes, as: UTF8.self).split(separator: "\n").map(String.init)
        }
        #expect(received.sorted() == lines.sorted())
        relay.signal(SIGTERM)
        #expect(relay.waitForExit() == 0, "\(relay.standardError)")
        #expect(relay.counter("statsrelay.backend.lines_sent{backend=\"\(backendSpec)\"}") == UInt64(lines.count), "\(relay.standardError)")
    }
}
