@testable import RelayKernel
import Foundation
import Glibc
import Testing
@testable import UringRelay

/// A reload that moves the listener between the wildcard and a specific address on the same
/// port: the relay's own sockets hold that port, so it must not be refused as if another
/// process did, and the lines sent around it arrive once.
@Suite("Listeners reloaded between a wildcard and a specific address on one port", .serialized, .timeLimit(.minutes(1)))
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
