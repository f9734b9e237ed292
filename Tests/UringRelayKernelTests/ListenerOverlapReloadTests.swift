@testable import RelayKernel
import Foundation
import Glibc
import Testing
@testable import UringRelay

/// A reload that moves the listener between the wildcard and a specific address on the same
/// port: the relay's own sockets hold that port, so it must not be refused as if another
/// process did, and the lines sent around it arrive once.
@Suite("Listeners reloaded between a wildcard and a specific address on one port", .serialized, .timeLimit(.minutes(1)), .onOwnThread)
struct ListenerOverlapReloadTests {
    @Test("0.0.0.0:P → 127.0.0.1:P → 0.0.0.0:P by reload: each is applied, the listener in force is the new one, and every line sent to 127.0.0.1:P before, between and after arrives exactly once", arguments: ioDrivers)
    func wildcardAndSpecific(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let relay = try InProcessRelay(backends: [backend], driver: driver) { configuration in
            configuration.bindHost = "0.0.0.0"
            configuration.threads = 2
            let cpu = nextTestCPU()
            configuration.cpus = [cpu, cpu]
        }
        #expect(relay.relay.driver == driver)
        let port = relay.address.port
        let target = SocketAddress(numericHost: "127.0.0.1", port: port)!
        var sent: [String] = []
        for (step, host) in ["127.0.0.1", "0.0.0.0"].enumerated() {
            let lines = (0..<500).map { "move.\(step).\($0):1|c" }
            try send(lines, to: target)
            sent += lines
            var next = relay.relay.configurationInForce
            next.bindHost = host
            next.port = port
            let plan = try relay.relay.reload(to: next)
            #expect(plan.applied.map(\.key) == ["listeners"], "step \(step)")
            #expect(plan.workersNotApplied == 0)
            #expect(relay.relay.listenAddresses == [SocketAddress(numericHost: host, port: port)!])
        }
        let after = (0..<50).map { "after:\($0)|c" }
        try send(after, to: target)
        sent += after
        let received = try collect(from: [backend], expectedLines: sent.count)
        let missing = Set(sent).subtracting(received.lines[0])
        #expect(missing.isEmpty, "\(missing.count) lines lost, e.g. \(missing.prefix(3))")
        #expect(received.lines[0].count == sent.count, "\(received.lines[0].count) lines arrived for \(sent.count) sent")
        let counters = relay.stop()
        #expect(counters[.datagramsReceived] == UInt64(sent.count))
        #expect(counters[.datagramsDroppedKernel] == 0)
    }

    @Test("tcp:0.0.0.0:P → tcp:127.0.0.1:P → tcp:0.0.0.0:P by reload: each is applied (the relay's own sockets hold the port), the listener in force is the new one, and a connection to 127.0.0.1:P made at each step relays its lines", arguments: ioDrivers)
    func tcpWildcardAndSpecific(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let port = try unusedTCPPort()
        let relay = try InProcessRelay(backends: [backend], driver: driver) { configuration in
            configuration.tcpListeners = [SocketAddress(numericHost: "0.0.0.0", port: port)!]
            configuration.threads = 2
            let cpu = nextTestCPU()
            configuration.cpus = [cpu, cpu]
        }
        let target = SocketAddress(numericHost: "127.0.0.1", port: port)!
        var sent: [String] = []
        var clients: [TCPIngestClient] = []
        for (step, host) in ["127.0.0.1", "0.0.0.0", "-"].enumerated() {
            let client = try TCPIngestClient(to: target)
            clients.append(client)
            let lines = (0..<100).map { "tcpmove.\(step).\($0):1|c" }
            try client.write(lines.map { $0 + "\n" }.joined())
            sent += lines
            guard host != "-" else { break }
            var next = relay.relay.configurationInForce
            next.tcpListeners = [SocketAddress(numericHost: host, port: port)!]
            let plan = try relay.relay.reload(to: next)
            #expect(plan.applied.map(\.key) == ["listeners"], "step \(step)")
            #expect(plan.workersNotApplied == 0)
            #expect(relay.relay.tcpListenAddresses == [SocketAddress(numericHost: host, port: port)!])
        }
        let received = try collect(from: [backend], expectedLines: sent.count)
        #expect(received.lines[0].sorted() == sent.sorted(), "every line once")
        for client in clients { client.finish() }
        _ = relay.stop()
    }

    @Test("a reload that moves listeners[0] leaves the --tcp-port listener where it started (a restart key), and the reloads after it apply", arguments: ioDrivers)
    func tcpPortStaysWhenBindMoves(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backends = try (0..<2).map { _ in try TestBackend() }
        let tcpPort = try unusedTCPPort()
        let relay = try InProcessRelay(backends: [backends[0]], driver: driver) { configuration in
            configuration.bindHost = "0.0.0.0"
            configuration.tcpPort = tcpPort
        }
        let udpPort = relay.address.port
        let started = SocketAddress(numericHost: "0.0.0.0", port: tcpPort)!
        var moved = relay.relay.configurationInForce
        moved.bindHost = "127.0.0.1"
        moved.port = udpPort
        let first = try relay.relay.reload(to: moved)
        #expect(first.applied.map(\.key) == ["listeners"])
        #expect(first.workersNotApplied == 0)
        #expect(relay.relay.listenAddresses == [SocketAddress(numericHost: "127.0.0.1", port: udpPort)!])
        #expect(relay.relay.tcpListenAddresses == [started], "the tcp-port listener moved without a restart")
        // A reload of something else only: applied, the TCP listener untouched.
        var more = relay.relay.configurationInForce
        more.backends = try backends.map { try BackendAddress(parsing: $0.spec) }
        let second = try relay.relay.reload(to: more)
        #expect(second.applied.map(\.key) == ["backends"])
        #expect(second.workersNotApplied == 0)
        #expect(relay.relay.tcpListenAddresses == [started])
        let client = try TCPIngestClient(to: SocketAddress(numericHost: "127.0.0.1", port: tcpPort)!)
        try client.write("after.reloads:1|c\n")
        let received = try collect(from: backends, expectedLines: 1)
        #expect(received.lines.flatMap { $0 } == ["after.reloads:1|c"])
        client.finish()
        _ = relay.stop()
    }

    @Test("overlap: same port and one a wildcard of the other's family (or the IPv6 wildcard)", arguments: [
        ("0.0.0.0:8125", "127.0.0.1:8125", true),
        ("127.0.0.1:8125", "0.0.0.0:8125", true),
        ("[::]:8125", "127.0.0.1:8125", true),
        ("0.0.0.0:8125", "[::1]:8125", false),
        ("0.0.0.0:8125", "127.0.0.1:8126", false),
        ("127.0.0.1:8125", "127.0.0.2:8125", false),
    ])
    func overlapRule(one: String, other: String, overlaps: Bool) throws {
        func address(_ text: String) throws -> SocketAddress {
            let parsed = try BackendAddress(parsing: text)
            return try #require(SocketAddress(numericHost: parsed.host, port: parsed.port))
        }
        #expect(Relay.overlap(try address(one), try address(other)) == overlaps)
    }
}
