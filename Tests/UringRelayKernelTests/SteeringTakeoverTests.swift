@testable import RelayKernel
import Foundation
import Glibc
import Testing
@testable import UringRelay

/// `--reuseport-steering` on sockets a relay took over: the new relay's choice replaces the
/// program the old relay left on the listener's `SO_REUSEPORT` group, both ways.
@Suite("SO_REUSEPORT steering after a takeover: the new relay's choice is in force", .serialized, .timeLimit(.minutes(1)), .onOwnThread)
struct SteeringTakeoverTests {
    /// Two-worker relays (pinned to `cpus`, or the default CPUs): one with `before`, then a
    /// takeover by one with `after`. Returns the new relay once the old one has exited 0, with
    /// the listener's address and the backends.
    func takeover(
        driver: IOBackendChoice, before: ReusePortSteering, after: ReusePortSteering, cpus: (Int, Int)? = nil
    ) throws -> (relay: RelayProcess, address: SocketAddress, backends: [TestBackend]) {
        let backends = try (0..<2).map { _ in try TestBackend() }
        let control = TakeoverTests.ControlPath()
        let workers = cpus.map { ["--threads", "2", "--cpus", "\($0.0),\($0.1)"] } ?? twoWorkerArguments
        func arguments(port: UInt16, steering: ReusePortSteering, takeover: Bool) -> [String] {
            ["--bind", "127.0.0.1", "--port", "\(port)", "--rcvbuf", "4M", "--reuseport-steering", steering.rawValue,
             "--control-socket", control.path] + (takeover ? ["--takeover", control.path] : []) + workers + backends.map(\.spec)
        }
        let old = try RelayProcess(driver: driver, arguments(port: 0, steering: before, takeover: false))
        let address = try old.listenAddress()
        try #require(old.waitForLog("control socket on \(control.path)"), "\(old.standardError)")
        let new = try RelayProcess(driver: driver, arguments(port: address.port, steering: after, takeover: true))
        try #require(new.waitForLog("takeover complete"), "\(new.standardError)")
        #expect(old.waitForExit(seconds: 10) == 0, "\(old.standardError)")
        return (new, address, backends)
    }

    /// `takeover(driver:before:after:)`, then the new relay is stopped (SIGSTOP) while one client
    /// socket sends 200 one-line datagrams: returns the bytes queued in each socket of the
    /// listener, after checking every line reached the backend its hash names and both relays
    /// exited 0.
    func queuesAfterTakeover(driver: IOBackendChoice, before: ReusePortSteering, after: ReusePortSteering) throws -> [Int] {
        let (relay, address, backends) = try takeover(driver: driver, before: before, after: after)
        return try ReusePortSteeringTests.queuesOfOneClient(relay: relay, address: address, backends: backends)
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

    @Test("hash, then a takeover asking for cpu: each CPU's 16 client sockets all wait in one worker's socket, a different one per CPU", arguments: ioDrivers)
    func cpuReplacesHash(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let cpus = try ReusePortSteeringTests.steeringCPUs()
        let (relay, address, backends) = try takeover(driver: driver, before: .hash, after: .cpu, cpus: cpus)
        try ReusePortSteeringTests.expectSteeredByCPU(relay: relay, address: address, cpus: cpus, backends: backends)
    }

    @Test("cpu, then a takeover asking for hash: 32 client sockets on one CPU spread over both workers' sockets again", arguments: ioDrivers)
    func hashReplacesCPU(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let cpus = try ReusePortSteeringTests.steeringCPUs()
        let (relay, address, backends) = try takeover(driver: driver, before: .cpu, after: .hash, cpus: cpus)
        try #require(relay.suspend(), "the relay did not stop")
        let lines = try sendPinned(to: cpus.0, flows: 32, to: address) { flow in ["spread.\(flow):1|c"] }
        let queues = udpReceiveQueues(port: address.port)
        relay.signal(SIGCONT)
        let received = try collect(from: backends, expectedLines: lines.count)
        relay.signal(SIGTERM)
        #expect(relay.waitForExit() == 0, "\(relay.standardError)")
        // Left steered by CPU, all 32 would wait in one socket; hashed, that is a 1 in 2^31 chance.
        #expect(queues.count == 2 && queues.allSatisfy { $0 > 0 }, "queued bytes per worker socket: \(queues)")
        #expect(received.lines.joined().sorted() == lines.sorted())
    }
}
