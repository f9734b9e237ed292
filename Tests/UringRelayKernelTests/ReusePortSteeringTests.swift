@testable import RelayKernel
import Foundation
import Glibc
import Testing
@testable import UringRelay

/// `--reuseport-steering`: which worker's socket of a listener's `SO_REUSEPORT` group takes each
/// datagram. One client socket, two workers: the kernel's hash keeps it on one worker; the random
/// program spreads it over both.
@Suite("SO_REUSEPORT steering: one busy client over every worker", .serialized, .timeLimit(.minutes(1)))
struct ReusePortSteeringTests {
    /// A two-worker relay child with `steering`, stopped (SIGSTOP) while one client socket sends
    /// 200 one-line datagrams, so they wait in the workers' sockets: returns the bytes queued in
    /// each of the listener's sockets, then resumes it and checks every line reaches the backend
    /// its hash names and the relay exits 0.
    func queuesOfOneClient(driver: IOBackendChoice, steering: ReusePortSteering) throws -> [Int] {
        let backends = try (0..<2).map { _ in try TestBackend() }
        let relay = try RelayProcess(
            driver: driver,
            ["--bind", "127.0.0.1", "--port", "0", "--rcvbuf", "4M", "--reuseport-steering", steering.rawValue]
                + twoWorkerArguments + backends.map(\.spec))
        return try Self.queuesOfOneClient(relay: relay, address: try relay.listenAddress(), backends: backends)
    }

    /// Stops `relay` (two workers on `address`, relaying to `backends`) while one client socket
    /// sends 200 one-line datagrams: returns the bytes queued in each of the listener's sockets,
    /// then resumes and stops it, checking every line reached the backend its hash names, the
    /// relay exited 0 and ran two workers.
    static func queuesOfOneClient(relay: RelayProcess, address: SocketAddress, backends: [TestBackend]) throws -> [Int] {
        try #require(relay.suspend(), "the relay did not stop")
        let lines = (0..<200).map { "steer.\($0):1|c" }
        let client = try UDPSocket.bound(to: SocketAddress(numericHost: "127.0.0.1", port: 0)!)
        for line in lines { try client.send(Array(line.utf8), to: address) }
        let queues = udpReceiveQueues(port: address.port)
        relay.signal(SIGCONT)
        let received = try collect(from: backends, expectedLines: lines.count)
        relay.signal(SIGTERM)
        #expect(relay.waitForExit() == 0, "\(relay.standardError)")
        for backend in 0..<backends.count {
            #expect(
                received.lines[backend].sorted() == lines.filter { expectedBackend(of: $0, backends: backends.count) == backend }.sorted(),
                "backend \(backend)")
        }
        #expect(relay.standardError.contains("threads=2"))
        return queues
    }

    @Test("hash (the default): one client socket's 200 datagrams all wait in one worker's socket", arguments: ioDrivers)
    func hashKeepsOneClientOnOneWorker(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let queues = try queuesOfOneClient(driver: driver, steering: .hash)
        #expect(queues.count == 2, "sockets on the port: \(queues)")
        #expect(queues.filter { $0 > 0 }.count == 1, "queued bytes per worker socket: \(queues)")
    }

    @Test("random: one client socket's 200 datagrams wait in both workers' sockets, and every line still reaches its backend", arguments: ioDrivers)
    func randomSpreadsOneClient(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let queues = try queuesOfOneClient(driver: driver, steering: .random)
        #expect(queues.count == 2, "sockets on the port: \(queues)")
        // Each datagram picks a socket at random: all 200 on one would be a 1 in 2^199 chance.
        #expect(queues.allSatisfy { $0 > 0 }, "queued bytes per worker socket: \(queues)")
    }

    @Test("a bad steering, and random with --reuseport-group, exit 64 naming the option", arguments: [
        (["--reuseport-steering", "cpu", "127.0.0.1:9"], "reuseport-steering"),
        (["--reuseport-steering", "random", "--reuseport-group", "127.0.0.1:9"], "--reuseport-steering 'random'"),
    ])
    func badSteering(_ arguments: [String], _ message: String) throws {
        let result = try RelayProcess.run(arguments)
        #expect(result.status == 64)
        #expect(result.error.contains(message), "stderr: \(result.error)")
    }
}
