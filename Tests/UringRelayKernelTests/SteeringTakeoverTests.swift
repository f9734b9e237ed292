@testable import RelayKernel
import Foundation
import Glibc
import Testing
@testable import UringRelay

/// `--reuseport-steering` on sockets a relay took over: the new relay's choice replaces the
/// program the old relay left on the listener's `SO_REUSEPORT` group, both ways.
@Suite("SO_REUSEPORT steering after a takeover: the new relay's choice is in force", .serialized, .timeLimit(.minutes(1)))
struct SteeringTakeoverTests {
    /// Two-worker relays: one with `before`, then a takeover by one with `after`. Once the old
    /// relay has exited, the new one is stopped (SIGSTOP) while one client socket sends 200
    /// one-line datagrams: returns the bytes queued in each socket of the listener, after
    /// checking every line reached the backend its hash names and both relays exited 0.
    func queuesAfterTakeover(driver: IOBackendChoice, before: ReusePortSteering, after: ReusePortSteering) throws -> [Int] {
        let backends = try (0..<2).map { _ in try TestBackend() }
        let control = TakeoverTests.ControlPath()
        func arguments(port: UInt16, steering: ReusePortSteering, takeover: Bool) -> [String] {
            ["--bind", "127.0.0.1", "--port", "\(port)", "--rcvbuf", "4M", "--reuseport-steering", steering.rawValue,
             "--control-socket", control.path] + (takeover ? ["--takeover", control.path] : []) + twoWorkerArguments + backends.map(\.spec)
        }
        let old = try RelayProcess(driver: driver, arguments(port: 0, steering: before, takeover: false))
        let address = try old.listenAddress()
        try #require(old.waitForLog("control socket on \(control.path)"), "\(old.standardError)")
        let new = try RelayProcess(driver: driver, arguments(port: address.port, steering: after, takeover: true))
        try #require(new.waitForLog("takeover complete"), "\(new.standardError)")
        #expect(old.waitForExit(seconds: 10) == 0, "\(old.standardError)")
        return try ReusePortSteeringTests.queuesOfOneClient(relay: new, address: address, backends: backends)
    }

    @Test("hash, then a takeover asking for random: one client socket's 200 datagrams wait in both workers' sockets", arguments: ioDrivers)
    func randomReplacesHash(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let queues = try queuesAfterTakeover(driver: driver, before: .hash, after: .random)
        #expect(queues.count == 2, "sockets on the port: \(queues)")
        // Each datagram picks a socket at random: all 200 on one would be a 1 in 2^199 chance.
        #expect(queues.allSatisfy { $0 > 0 }, "queued bytes per worker socket: \(queues)")
    }

    @Test("random, then a takeover asking for hash: one client socket's 200 datagrams all wait in one worker's socket", arguments: ioDrivers)
    func hashReplacesRandom(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let queues = try queuesAfterTakeover(driver: driver, before: .random, after: .hash)
        #expect(queues.count == 2, "sockets on the port: \(queues)")
        #expect(queues.filter { $0 > 0 }.count == 1, "queued bytes per worker socket: \(queues)")
    }
}
