import Foundation
import Glibc
import Logging
@testable import RelayKernel
import RoutingReference
import Synchronization
import Testing
@testable import UringRelay

/// A relay with health checks on three loopback backends, each with its own TCP health port.
final class HealthHarness: @unchecked Sendable {
    var backends: [TestBackend]
    let healthPorts: [FakeHealthPort]
    let relay: Relay
    let address: SocketAddress
    let log = LockedText()

    init(
        driver: IOBackendChoice, policy: DownPolicy, mode: HealthCheckMode = .tcp, sharedHealthPort: FakeHealthPort? = nil,
        configure: (inout RelayConfiguration) -> Void = { _ in }
    ) throws {
        // Each backend's TCP health port has the number of its UDP port. The TCP port of that
        // number may be taken (an outgoing connection's ephemeral port, from health probes of a
        // suite running alongside): then that backend is replaced by one on another UDP port.
        var backends: [TestBackend] = []
        var healthPorts: [FakeHealthPort] = []
        for _ in 0..<50 where backends.count < 3 {
            let backend = try TestBackend()
            if sharedHealthPort == nil {
                guard let healthPort = try Self.healthPort(on: backend.address.port) else { continue }
                healthPorts.append(healthPort)
            }
            backends.append(backend)
        }
        try #require(backends.count == 3, "no UDP port whose TCP twin was free in 50 tries")
        self.backends = backends
        self.healthPorts = healthPorts
        var configuration = RelayConfiguration(backends: try backends.map { try BackendAddress(parsing: $0.spec) })
        configuration.bindHost = "127.0.0.1"
        configuration.port = 0
        configuration.threads = 1
        configuration.healthCheck = mode
        configuration.healthCheckPort = sharedHealthPort?.port
        configuration.healthIntervalNanoseconds = 50_000_000
        configuration.healthTimeoutNanoseconds = 40_000_000
        configuration.healthRise = 2
        configuration.healthFall = 2
        configuration.onBackendDown = policy
        configuration.ioBackend = driver
        configure(&configuration)
        if configuration.threads == 1 && configuration.cpus == nil { configuration.cpus = [nextTestCPU()] }
        let store = log
        relay = try Relay(configuration: configuration, logger: Logger(label: "test") { _ in CapturingLogHandler(store: store) })
        address = try relay.start().listen
        #expect(relay.driver == driverExpected(for: driver), "the relay runs \(relay.driver)")
    }

    /// A fake health port on TCP `port`, or `nil` if that port is taken.
    static func healthPort(on port: UInt16) throws -> FakeHealthPort? {
        do {
            return try FakeHealthPort(port: port)
        } catch let error as Errno where error.rawValue == EADDRINUSE {
            return nil
        }
    }

    /// Waits until backend `index` is in `state` as the monitor sees it and as the routing the
    /// workers read has it (the monitor's view can come first), so every datagram sent from
    /// then on is routed by it.
    func wait(for index: Int, _ state: HealthTracker.State) -> Bool {
        relay.monitor.waitUntil(timeoutNanoseconds: 10_000_000_000) { $0[index].state == state }
            && poll(seconds: 10) { relay.routing.current.down[index] == (state == .down) }
    }

    func stop() -> RelayCounters {
        relay.stop()
        let (counters, failures) = relay.wait()
        #expect(failures.isEmpty)
        return counters
    }
}

/// Lines whose primary backend (of 3) is `backend`, and lines whose primary is another.
func lines(count: Int, prefix: String) -> [String] { (0..<count).map { "\(prefix).\($0):1|c" } }

@Suite("Backend health and failover on loopback", .serialized, .timeLimit(.minutes(1)), .onOwnThread)
struct HealthKernelTests {
    @Test("rehash: a backend whose TCP check fails loses only its own metrics, which return when it recovers", arguments: ioDrivers)
    func rehashFailover(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let harness = try HealthHarness(driver: driver, policy: .rehash)
        harness.healthPorts[1].close()
        #expect(harness.wait(for: 1, .down))
        let sent = lines(count: 3_000, prefix: "rehash")
        var expected: [[String]] = [[], [], []]
        for line in sent { expected[ReferenceRouting.rehashed(metricName(of: line), backends: 3, down: [1])].append(line) }
        try send(sent, to: harness.address)
        let received = try collect(from: harness.backends, expectedLines: sent.count)
        for backend in 0..<3 { #expect(received.lines[backend].sorted() == expected[backend].sorted()) }
        #expect(expected[1].isEmpty)

        try harness.healthPorts[1].reopen()
        #expect(harness.wait(for: 1, .up))
        try send(sent, to: harness.address)
        let back = try collect(from: harness.backends, expectedLines: sent.count)
        for backend in 0..<3 {
            #expect(back.lines[backend].sorted() == sent.filter { expectedBackend(of: $0, backends: 3) == backend }.sorted())
        }
        let counters = harness.stop()
        #expect(counters[.linesRehashed] == UInt64(sent.filter { expectedBackend(of: $0, backends: 3) == 1 }.count))
        #expect(occurrences(of: "backend down", in: harness.log.withLock { $0 }) == 1)
        #expect(occurrences(of: "backend up", in: harness.log.withLock { $0 }) == 1)
    }

    @Test("refused sends (ICMP port unreachable) take a backend down even while its TCP check passes", arguments: ioDrivers)
    func refusalsCountAsFailures(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let shared = try FakeHealthPort()
        let harness = try HealthHarness(driver: driver, policy: .rehash, sharedHealthPort: shared) { $0.healthRise = 100 }
        // The old socket keeps its port (no other test's socket can be given it) and takes
        // nothing more: every datagram to it is answered port unreachable.
        let dead = harness.backends[2]
        try dead.socket.refuseNewDatagrams()
        defer { withExtendedLifetime(dead) {} }
        harness.backends[2] = try TestBackend()
        let toDead = lines(count: 2_000, prefix: "icmp").filter { expectedBackend(of: $0, backends: 3) == 2 }
        // Keep sending until the monitor has seen the refusals (a bounded number of rounds).
        var rounds = 0
        while harness.relay.monitor.status[2].state == .up && rounds < 200 {
            try send(Array(toDead.prefix(20)), to: harness.address)
            _ = harness.relay.monitor.waitUntil(timeoutNanoseconds: 20_000_000) { $0[2].state == .down }
            rounds += 1
        }
        #expect(harness.relay.monitor.status[2].state == .down)
        #expect(harness.relay.monitor.status[2].lastFailure?.contains("refused") == true)
        // Now its metrics go to the live backends, and every line is accounted for.
        try send(toDead, to: harness.address)
        let received = try collect(from: Array(harness.backends.prefix(2)), expectedLines: toDead.count)
        let counters = harness.stop()
        let late = try collect(from: Array(harness.backends.prefix(2)), expectedLines: 0, seconds: 0.2)
        let rehashedArrivals = (received.lines + late.lines).flatMap { $0 }.filter { $0.hasPrefix("icmp.") }
        #expect(counters[.packetsRefused, backend: 2] + counters[.sendRetries, backend: 2] > 0)
        #expect(UInt64(rehashedArrivals.count) == counters[.linesRehashedAway, backend: 2])
        #expect(rehashedArrivals.count >= toDead.count)
        let sentToDead = UInt64(min(20, toDead.count) * rounds + toDead.count)
        #expect(counters[.linesSent, backend: 2] == 0, "a delivery to a dead backend was claimed")
        #expect(counters[.linesRefused, backend: 2] + counters[.linesDroppedSendError, backend: 2] + counters[.linesRehashedAway, backend: 2] == sentToDead)
    }

    @Test("hold: a down backend's batches are kept and replayed, in order, when it recovers", arguments: ioDrivers)
    func holdReplays(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let harness = try HealthHarness(driver: driver, policy: .hold)
        harness.healthPorts[0].close()
        #expect(harness.wait(for: 0, .down))
        let sent = lines(count: 3_000, prefix: "hold")
        let toDown = sent.filter { expectedBackend(of: $0, backends: 3) == 0 }
        try send(sent, to: harness.address)
        let meanwhile = try collect(from: harness.backends, expectedLines: sent.count - toDown.count)
        #expect(meanwhile.lines[0].isEmpty, "a held backend received lines while down")
        #expect(meanwhile.totalLines == sent.count - toDown.count)
        try harness.healthPorts[0].reopen()
        #expect(harness.wait(for: 0, .up))
        // No new traffic: the worker is woken by the health change and replays on its own.
        let replayed = try collect(from: [harness.backends[0]], expectedLines: toDown.count)
        #expect(replayed.lines[0] == toDown, "held lines must arrive whole and in order")
        let counters = harness.stop()
        #expect(counters[.linesHeld, backend: 0] == UInt64(toDown.count))
        #expect(counters[.linesReplayed, backend: 0] == UInt64(toDown.count))
        #expect(counters[.linesDroppedHoldOverflow] == 0)
    }

    @Test("hold: past --hold-bytes the oldest batches are dropped and counted; the rest replay", arguments: ioDrivers)
    func holdOverflow(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let harness = try HealthHarness(driver: driver, policy: .hold) { $0.holdBytes = 4_096 }
        harness.healthPorts[0].close()
        #expect(harness.wait(for: 0, .down))
        let toDown = lines(count: 3_000, prefix: "overflow").filter { expectedBackend(of: $0, backends: 3) == 0 }
        let marker = lines(count: 100, prefix: "marker").first { expectedBackend(of: $0, backends: 3) == 1 }!
        try send(toDown + [marker], to: harness.address)
        // Datagrams are relayed in order: once the marker reaches backend 1, every line for
        // backend 0 has been held (or dropped from the hold). Only then may it recover.
        #expect(try collect(from: [harness.backends[1]], expectedLines: 1).lines[0] == [marker])
        try harness.healthPorts[0].reopen()
        #expect(harness.wait(for: 0, .up))
        let replayed = try collect(from: [harness.backends[0]], expectedLines: 1, seconds: 5)
        let counters = harness.stop()
        let late = try collect(from: [harness.backends[0]], expectedLines: 0, seconds: 0.2)
        let arrived = replayed.lines[0] + late.lines[0]
        #expect(counters[.linesDroppedHoldOverflow, backend: 0] > 0)
        #expect(UInt64(arrived.count) + counters[.linesDroppedHoldOverflow, backend: 0] + counters[.linesDroppedHeldAtExit]
                == UInt64(toDown.count))
        // What survives is the newest: a suffix of what was sent, in order.
        #expect(Array(toDown.suffix(arrived.count)) == arrived)
    }

    @Test("drop: a down backend's lines are counted and dropped; the live ones get every one of theirs", arguments: ioDrivers)
    func dropCounts(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let harness = try HealthHarness(driver: driver, policy: .drop)
        harness.healthPorts[2].close()
        #expect(harness.wait(for: 2, .down))
        let sent = lines(count: 20_000, prefix: "drop")
        let toDown = sent.filter { expectedBackend(of: $0, backends: 3) == 2 }
        for chunk in stride(from: 0, to: sent.count, by: 40) {
            try send([sent[chunk..<min(chunk + 40, sent.count)].joined(separator: "\n")], to: harness.address)
        }
        let received = try collect(from: harness.backends, expectedLines: sent.count - toDown.count)
        let counters = harness.stop()
        #expect(received.lines[2].isEmpty)
        #expect(received.totalLines == sent.count - toDown.count)
        #expect(counters[.linesDroppedBackendDown, backend: 2] == UInt64(toDown.count))
        #expect(counters[.linesForwarded] + counters[.linesDroppedBackendDown] == UInt64(sent.count))
    }

    @Test("statsd-admin: 'health: down' from every backend fails open (lines reach their primaries), logged once per change", arguments: ioDrivers)
    func allBackendsDown(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let admin = try FakeHealthPort()
        let harness = try HealthHarness(driver: driver, policy: .rehash, mode: .statsdAdmin, sharedHealthPort: admin)
        admin.answer("health: down\n")
        #expect(harness.relay.monitor.waitUntil(timeoutNanoseconds: 10_000_000_000) { $0.allSatisfy { $0.state == .down } })
        let sent = lines(count: 500, prefix: "nowhere")
        try send(sent, to: harness.address)
        let received = try collect(from: harness.backends, expectedLines: sent.count)
        admin.answer("health: up\n")
        #expect(harness.relay.monitor.waitUntil(timeoutNanoseconds: 10_000_000_000) { $0.allSatisfy { $0.state == .up } })
        let counters = harness.stop()
        let log = harness.log.withLock { $0 }
        #expect(occurrences(of: "every backend is down: failing open", in: log) == 1)
        #expect(occurrences(of: "a backend is up again; failing open ends", in: log) == 1)
        #expect(log.split(separator: "\n").filter { $0.hasPrefix("info backend down") && $0.contains("reason=reply: 'health: down'") }.count == 3)
        for backend in 0..<3 {
            #expect(received.lines[backend].sorted() == sent.filter { expectedBackend(of: $0, backends: 3) == backend }.sorted())
        }
        #expect(counters[.linesDroppedBackendDown] == 0)
        #expect(counters[.linesFailOpen] == UInt64(sent.count))
        #expect(harness.relay.monitor.failOpenActivations == 1)
    }

    /// A relay (not started) whose one backend is the name `statsd.test`, resolving to whatever
    /// `target` holds (starting at `start`) and re-resolved every 100 ms; its log captured.
    static func relayFollowingName(
        from start: SocketAddress, driver: IOBackendChoice, configure: (inout RelayConfiguration) -> Void = { _ in }
    ) throws -> (relay: Relay, target: NameTarget, log: LockedText) {
        let target = NameTarget(start)
        let resolver: HealthMonitor.Resolver = { host, port in
            if host == "statsd.test" { return [target.address] }
            return try SocketAddress.resolve(host: host, port: port)
        }
        var configuration = RelayConfiguration(backends: [try BackendAddress(parsing: "statsd.test:\(start.port)")])
        configuration.bindHost = "127.0.0.1"
        configuration.port = 0
        configuration.threads = 1
        configuration.dnsRefreshNanoseconds = 100_000_000
        configuration.ioBackend = driver
        configure(&configuration)
        let log = LockedText()
        let relay = try Relay(configuration: configuration, logger: Logger(label: "test") { _ in CapturingLogHandler(store: log) }, resolver: resolver)
        return (relay, target, log)
    }

    @Test("a backend name that changes address is followed without restart, and the change is logged", arguments: ioDrivers)
    func dnsChange(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let first = try TestBackend()
        let second = try TestBackend()
        let (relay, target, log) = try Self.relayFollowingName(from: first.address, driver: driver)
        let address = try relay.start().listen
        #expect(relay.driver == driver)
        try send(["before.move:1|c"], to: address)
        #expect(try collect(from: [first], expectedLines: 1).lines[0] == ["before.move:1|c"])
        target.move(to: second.address)
        #expect(relay.monitor.waitUntil(timeoutNanoseconds: 10_000_000_000) { $0[0].address == second.address })
        try send(["after.move:1|c"], to: address)
        #expect(try collect(from: [second], expectedLines: 1).lines[0] == ["after.move:1|c"])
        relay.stop()
        _ = relay.wait()
        #expect(try collect(from: [first], expectedLines: 0, seconds: 0.1).totalLines == 0)
        #expect(occurrences(of: "backend address changed", in: log.withLock { $0 }) == 1)
    }

    @Test("a backend name that moves from a dead port to a live one: lines sent to the dead address count as refused, the rest as sent, none lost from the count", arguments: ioDrivers)
    func dnsMoveAccountsForTheOldSocket(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        // A port with nothing listening: every datagram to it is refused (below the ephemeral
        // range, so no other test's socket takes it meanwhile).
        let deadPort = try unusedPort()
        let live = try TestBackend()
        let (relay, target, _) = try Self.relayFollowingName(
            from: SocketAddress(numericHost: "127.0.0.1", port: deadPort)!, driver: driver) { $0.flushIntervalNanoseconds = 1_000_000 }
        let address = try relay.start().listen
        #expect(relay.driver == driver)
        let before = (0..<20).map { "to.dead.\($0):1|c" }
        for line in before { try send([line], to: address) }
        target.move(to: live.address)
        #expect(relay.monitor.waitUntil(timeoutNanoseconds: 10_000_000_000) { $0[0].address == live.address })
        // Wait for the workers to follow: a line reaches the new address.
        var probes = 0
        var arrived: [String] = []
        while arrived.isEmpty && probes < 50 {
            try send(["probe.\(probes):1|c"], to: address)
            arrived = try collect(from: [live], expectedLines: 1, seconds: 0.2).lines[0]
            probes += 1
        }
        let after = (0..<20).map { "to.live.\($0):1|c" }
        for line in after { try send([line], to: address) }
        let received = try collect(from: [live], expectedLines: after.count)
        relay.stop()
        let (counters, failures) = relay.wait()
        #expect(failures.isEmpty)
        #expect(received.lines[0].filter { $0.hasPrefix("to.live.") }.sorted() == after.sorted())
        let backend = "statsd.test:\(deadPort)"
        let late = try collect(from: [live], expectedLines: 0, seconds: 0.1)
        let atLive = UInt64(arrived.count + received.totalLines + late.totalLines)
        // Probes sent before the move landed at the dead port: refused (or failed) like the rest.
        let total = UInt64(before.count + probes + after.count)
        #expect(counters[.linesSent, backend: backend] == atLive, "only what the live address got counts as sent")
        let unknown = counters[.linesDoubted, backend: backend] + counters[.linesUnconfirmedAtExit, backend: backend]
        #expect(counters[.linesSent, backend: backend] + counters[.linesRefused, backend: backend]
            + counters[.linesDroppedSendError, backend: backend] + unknown == total)
        #expect(counters[.linesRefused, backend: backend] + counters[.linesDroppedSendError, backend: backend] >= UInt64(before.count))
    }
}

/// Where a test's backend name resolves to now.
final class NameTarget: Sendable {
    private let current: Mutex<SocketAddress>
    init(_ address: SocketAddress) { current = Mutex(address) }
    var address: SocketAddress { current.withLock { $0 } }
    func move(to address: SocketAddress) { current.withLock { $0 = address } }
}
