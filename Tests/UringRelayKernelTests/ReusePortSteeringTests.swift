@testable import RelayKernel
import Foundation
import Glibc
import Testing
@testable import UringRelay

/// `--reuseport-steering`: which worker's socket of a listener's `SO_REUSEPORT` group takes each
/// datagram. One client socket, two workers: the kernel's hash keeps it on one worker; the random
/// program spreads it over both; `cpu` gives each worker what arrives on its CPU.
@Suite("SO_REUSEPORT steering: one busy client over every worker", .serialized, .timeLimit(.minutes(1)), .onOwnThread)
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

    /// The first two CPUs this process may use, or a skip where it has fewer.
    static func twoCPUs() throws -> (Int, Int) {
        let cpus = WorkerThread.allowedCPUs
        guard cpus.count >= 2 else { try Test.cancel("needs two CPUs to steer between, has \(cpus)") }
        return (cpus[0], cpus[1])
    }

    /// `twoCPUs()`, where loopback datagrams can be steered by the CPU that sends them: a skip
    /// on a kernel whose reuseport selection ignores `SO_INCOMING_CPU`, or with RPS on `lo`
    /// (another CPU would then receive them).
    static func steeringCPUs() throws -> (Int, Int) {
        let cpus = try twoCPUs()
        guard KernelSupport.selectsReusePortByIncomingCPU(release: KernelSupport.release) else {
            try Test.cancel("kernel \(KernelSupport.release) does not select reuseport sockets by SO_INCOMING_CPU")
        }
        let rps = (try? String(contentsOfFile: "/sys/class/net/lo/queues/rx-0/rps_cpus", encoding: .utf8)) ?? ""
        guard rps.allSatisfy({ "0,\n".contains($0) }) else { try Test.cancel("RPS is on for lo (rps_cpus \(rps)): loopback datagrams are received on other CPUs") }
        return cpus
    }

    /// With the relay stopped (SIGSTOP), 16 client sockets send 4 datagrams each from a thread
    /// on `first`, then 16 more from one on `second`: returns the bytes queued in each of the
    /// listener's sockets after each, and the lines sent.
    static func queuesByCPU(address: SocketAddress, first: Int, second: Int) throws -> (first: [Int], second: [Int], lines: [String]) {
        func batch(_ cpu: Int) -> @Sendable (Int) -> [String] {
            { flow in (0..<4).map { "cpu\(cpu).flow\(flow).\($0):1|c" } }
        }
        var lines = try sendPinned(to: first, flows: 16, to: address, batch: batch(first))
        let afterFirst = udpReceiveQueues(port: address.port)
        lines += try sendPinned(to: second, flows: 16, to: address, batch: batch(second))
        return (afterFirst, udpReceiveQueues(port: address.port), lines)
    }

    @Test("SO_INCOMING_CPU: of two sockets in a group, each takes every datagram sent from its CPU (16 client sockets each), and reads back its CPU")
    func incomingCPUPicksTheSocket() throws {
        let (first, second) = try Self.steeringCPUs()
        let one = try UDPSocket.bound(to: SocketAddress(numericHost: "127.0.0.1", port: 0)!, reusePort: true)
        let address = one.localAddress
        let other = try UDPSocket.bound(to: address, reusePort: true)
        try one.preferIncomingCPU(first)
        try other.preferIncomingCPU(second)
        #expect(one.incomingCPU == first && other.incomingCPU == second)
        let (afterFirst, afterSecond, _) = try Self.queuesByCPU(address: address, first: first, second: second)
        #expect(afterFirst.count == 2 && afterFirst.filter { $0 > 0 }.count == 1, "after the first CPU's flows: \(afterFirst)")
        #expect(afterSecond.count == 2 && afterSecond.allSatisfy { $0 > 0 }, "after the second CPU's: \(afterSecond)")
        #expect(zip(afterFirst, afterSecond).filter { $0 == $1 }.count == 1, "the first CPU's socket took none of the second's: \(afterFirst) → \(afterSecond)")
        try other.preferIncomingCPU(nil)
        #expect(other.incomingCPU == nil)
    }

    @Test("cpu: 16 client sockets on one CPU all wait in one worker's socket, 16 on the other CPU all in the other worker's, and every line reaches its backend", arguments: ioDrivers)
    func cpuSteersByReceivingCPU(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let (first, second) = try Self.steeringCPUs()
        let backends = try (0..<2).map { _ in try TestBackend() }
        let relay = try RelayProcess(
            driver: driver,
            ["--bind", "127.0.0.1", "--port", "0", "--rcvbuf", "4M", "--reuseport-steering", "cpu",
             "--threads", "2", "--cpus", "\(first),\(second)"] + backends.map(\.spec))
        let address = try relay.listenAddress()
        try Self.expectSteeredByCPU(relay: relay, address: address, cpus: (first, second), backends: backends)
    }

    /// Stops `relay` (two workers pinned to `cpus`, on `address`, relaying to `backends`) while
    /// 16 client sockets send from each CPU in turn: checks that each CPU's datagrams all wait
    /// in one socket, a different one per CPU; then resumes and stops it, checking every line
    /// reached the backend its hash names, the relay exited 0 and said it ran two workers on
    /// `cpus` steered by CPU.
    static func expectSteeredByCPU(relay: RelayProcess, address: SocketAddress, cpus: (Int, Int), backends: [TestBackend]) throws {
        try #require(relay.suspend(), "the relay did not stop")
        let (afterFirst, afterSecond, lines) = try queuesByCPU(address: address, first: cpus.0, second: cpus.1)
        relay.signal(SIGCONT)
        let received = try collect(from: backends, expectedLines: lines.count)
        relay.signal(SIGTERM)
        #expect(relay.waitForExit() == 0, "\(relay.standardError)")
        // With the hash, 16 flows all on one of two sockets would be a 1 in 2^15 chance.
        #expect(afterFirst.count == 2 && afterFirst.filter { $0 > 0 }.count == 1, "after CPU \(cpus.0)'s flows: \(afterFirst)")
        #expect(afterSecond.count == 2 && afterSecond.allSatisfy { $0 > 0 }, "after CPU \(cpus.1)'s: \(afterSecond)")
        #expect(zip(afterFirst, afterSecond).filter { $0 == $1 }.count == 1, "CPU \(cpus.0)'s socket took none of CPU \(cpus.1)'s: \(afterFirst) → \(afterSecond)")
        for backend in 0..<backends.count {
            #expect(
                received.lines[backend].sorted() == lines.filter { expectedBackend(of: $0, backends: backends.count) == backend }.sorted(),
                "backend \(backend)")
        }
        // What the start-up line tells the operator: the steering and each worker's CPU.
        #expect(relay.standardError.contains("threads=2"))
        #expect(relay.standardError.contains("cpus=\(cpus.0),\(cpus.1) "), "\(relay.standardError)")
        #expect(relay.standardError.contains("reuseport_steering=cpu"))
    }

    @Test("cpu: each worker's socket prefers the CPU that worker is pinned to, and so does its socket of a listener a reload adds", arguments: ioDrivers)
    func reloadAddsSteeredListener(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let (first, second) = try Self.twoCPUs()
        let backends = try (0..<2).map { _ in try TestBackend() }
        let relay = try InProcessRelay(backends: backends, driver: driver) { configuration in
            configuration.threads = 2
            // Reversed, so that a worker taking the other's CPU, or the CPUs in list order, shows.
            configuration.cpus = [second, first]
            configuration.reusePortSteering = .cpu
            // The takeover registry's copies of each worker's sockets, in worker order (never served).
            configuration.controlSocket = "/run/statsrelay/control.sock"
        }
        #expect(relay.relay.driver == driver)
        let registry = relay.relay.listenerRegistry
        let started = registry.sockets(listener: 0, workers: 2)?.map { $0.socket.incomingCPU }
        // A free port for the new listener, below the ephemeral range (`unusedPort()`).
        let newPort = try unusedPort()
        var next = relay.relay.configurationInForce
        next.additionalListeners.append(SocketAddress(numericHost: "127.0.0.1", port: newPort)!)
        let plan = try relay.relay.reload(to: next)
        #expect(plan.applied.map(\.key) == ["listeners"])
        #expect(plan.workersNotApplied == 0)
        let added = registry.sockets(listener: 1, workers: 2)?.map { $0.socket.incomingCPU }
        let addedPorts = registry.sockets(listener: 1, workers: 2)?.map { $0.socket.localAddress.port }
        _ = relay.stop()
        #expect(started == [second, first], "the start-up listener's sockets, by worker")
        #expect(addedPorts == [newPort, newPort])
        #expect(added == [second, first], "the added listener's sockets, by worker")
    }

    @Test("a bad steering, and random or cpu with --reuseport-group, exit 64 naming the option", arguments: [
        (["--reuseport-steering", "round-robin", "127.0.0.1:9"], "reuseport-steering"),
        (["--reuseport-steering", "random", "--reuseport-group", "127.0.0.1:9"], "--reuseport-steering 'random'"),
        (["--reuseport-steering", "cpu", "--reuseport-group", "127.0.0.1:9"], "--reuseport-steering 'cpu'"),
    ])
    func badSteering(_ arguments: [String], _ message: String) throws {
        let result = try RelayProcess.run(arguments)
        #expect(result.status == 64)
        #expect(result.error.contains(message), "stderr: \(result.error)")
    }
}
