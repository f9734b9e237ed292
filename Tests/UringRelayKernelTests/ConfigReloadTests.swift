@testable import RelayKernel
import Foundation
import Glibc
import Testing
@testable import UringRelay

/// Reloading the configuration file while the relay runs: through SIGHUP on the executable under
/// steady traffic, and through `Relay.reload` for the health checks.
@Suite("Configuration reload", .serialized, .timeLimit(.minutes(1)), .onOwnThread)
struct ConfigReloadTests {
    /// A configuration file for one worker on a kernel-chosen port, with `backends` and `extra`
    /// keys. A long flush interval keeps batches open across the reloads: they must reach the
    /// old pool's backends before the new pool takes over.
    static func yaml(_ backends: [String], extra: String = "") -> String {
        """
        listeners: ["127.0.0.1:0"]
        threads: 1
        flush-interval: 1s
        \(extra)
        backends:
        \(backends.map { "  - \($0)" }.joined(separator: "\n"))

        """
    }

    @Test("SIGHUP under steady traffic: backends 2 → 3 → reordered → an invalid file (refused, counted) → 2; every line arrives once, at the backend the configuration in force routed it to", arguments: ioDrivers)
    func backendsUnderTraffic(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backends = try (0..<3).map { _ in try TestBackend() }
        let specs = backends.map(\.spec)
        let pools: [[String]] = [
            [specs[0], specs[1]],
            [specs[0], specs[1], specs[2]],  // add
            [specs[2], specs[0], specs[1]],  // reorder
            [specs[1], specs[2]],  // remove
        ]
        let file = try TemporaryConfigFile(Self.yaml(pools[0]))
        let relay = try RelayProcess(driver: driver, ["--config", file.path])
        let address = try relay.listenAddress()
        #expect(relay.standardError.contains("io_backend=\(driver.rawValue)"), "\(relay.standardError)")
        let datagrams = 6_000
        // Reload at steps spread over the traffic; the invalid file comes between the third and
        // the last pool, with backends that would route differently had it been applied. The
        // last part is sent once the last reload is applied, so that its pool takes over.
        let steps = pools.count + 1
        let sender = try NumberedSender(
            to: address, datagrams: datagrams, linesPerDatagram: 10, pauseMicroseconds: 100, holdBefore: datagrams * (steps - 1) / steps)
        var step = 1
        for (index, pool) in pools.enumerated().dropFirst() {
            if index == pools.count - 1 {
                #expect(sender.waitUntilSent(datagrams * step / steps))
                step += 1
                try file.write(Self.yaml([specs[0]], extra: "packet-lenght: 512"))
                relay.signal(SIGHUP)
                #expect(relay.waitForLog("reload refused", seconds: 10), "\(relay.standardError)")
            }
            #expect(sender.waitUntilSent(datagrams * step / steps))
            step += 1
            // The second reload also changes a key that needs a restart: kept and logged.
            try file.write(Self.yaml(pool, extra: index == 2 ? "max-datagram: 4096" : ""))
            relay.signal(SIGHUP)
            #expect(relay.waitForLog("to=[\(pool.joined(separator: ", "))]", seconds: 10), "\(relay.standardError)")
        }
        sender.release()
        sender.join()
        let total = datagrams * sender.linesPerDatagram
        // Every line relayed before the stop: what this test checks is routing across reloads,
        // not what a stop on a loaded host leaves (StopBoundTests and the drain tests do that).
        let received = try collect(from: backends, expectedLines: total, seconds: 20)
        relay.signal(SIGTERM)
        #expect(relay.waitForExit() == 0, "\(relay.standardError)")

        // The refused file's single backend is no pool here: a line routed by it is misrouted.
        PoolChangeTests.expectArrivedOnceInPoolOrder(received.lines, specs: specs, pools: pools, total: total)

        let log = relay.standardError
        #expect(relay.counter("statsrelay.pool_changes") == UInt64(pools.count - 1))
        #expect(
            relay.counter("statsrelay.lines_forwarded") == UInt64(total),
            "received \(relay.counter("statsrelay.datagrams_received").map(String.init) ?? "?") datagrams; the kernel dropped \(relay.counter("statsrelay.datagrams_dropped.kernel").map(String.init) ?? "?")")
        #expect(relay.counter("statsrelay.config_reloads{result=\"success\"}") == UInt64(pools.count - 1))
        #expect(relay.counter("statsrelay.config_reloads{result=\"failure\"}") == 1)
        let refused = try #require(relay.logLine(containing: "reload refused"))
        #expect(refused.contains("key=packet-lenght"), "\(refused)")
        #expect(refused.contains("\(file.path):4: packet-lenght: unknown key (did you mean 'packet-len'?)"), "\(refused)")
        let kept = try #require(relay.logLine(containing: "reload: kept the running value"))
        #expect(kept.contains("key=max-datagram") && kept.contains("running=8192") && kept.contains("file=4096"), "\(kept)")
        #expect(kept.contains("needs a restart"), "\(kept)")
        #expect(!log.contains("nothing to reload"))
    }

    /// The file is read on the main thread, which also takes the stop signals: a FIFO at the
    /// path blocked its `open` until a writer came, and SIGTERM went unanswered.
    @Test("a configuration path that became a FIFO, a directory or a device: each reload refused naming what it is; the relay relays and stops on SIGTERM", arguments: ioDrivers)
    func notARegularFile(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let file = try TemporaryConfigFile(Self.yaml([backend.spec]))
        let relay = try RelayProcess(driver: driver, ["--config", file.path])
        let address = try relay.listenAddress()
        #expect(relay.standardError.contains("io_backend=\(driver.rawValue)"), "\(relay.standardError)")
        #expect(unlink(file.path) == 0)
        #expect(mkfifo(file.path, 0o600) == 0)
        relay.signal(SIGHUP)
        #expect(relay.waitForLog("not a regular file (a FIFO)", seconds: 10), "\(relay.standardError)")
        #expect(unlink(file.path) == 0)
        #expect(mkdir(file.path, 0o700) == 0)
        relay.signal(SIGHUP)
        #expect(relay.waitForLog("not a regular file (a directory)", seconds: 10), "\(relay.standardError)")
        #expect(rmdir(file.path) == 0)
        #expect(symlink("/dev/null", file.path) == 0)
        relay.signal(SIGHUP)
        #expect(relay.waitForLog("not a regular file (a character device)", seconds: 10), "\(relay.standardError)")

        let lines = (0..<50).map { "fifo.\($0):1|c" }
        try send(lines, to: address)
        let received = try collect(from: [backend], expectedLines: lines.count)
        #expect(received.lines[0].sorted() == lines.sorted())
        relay.signal(SIGTERM)
        #expect(relay.waitForExit() == 0, "\(relay.standardError)")
        #expect(relay.counter("statsrelay.config_reloads{result=\"failure\"}") == 3)
        #expect(relay.counter("statsrelay.config_reloads{result=\"success\"}") == 0)
    }

    @Test("SIGHUP changes the log level of every logger at once (notices vanish at error and come back at info); the command line still overrides the file", arguments: ioDrivers)
    func logLevel(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        // The file names the other driver: the command line's --io-backend must win, at start and
        // at each reload.
        let other = "io-backend: \(driver == .uring ? "portable" : "uring")"
        let file = try TemporaryConfigFile(Self.yaml([backend.spec], extra: "log-level: info\n\(other)"))
        let relay = try RelayProcess(driver: driver, ["--config", file.path])
        _ = try relay.listenAddress()
        #expect(relay.standardError.contains("io_backend=\(driver.rawValue)"), "\(relay.standardError)")
        try file.write(Self.yaml([backend.spec], extra: "log-level: error\n\(other)"))
        relay.signal(SIGHUP)
        // Signals are taken one at a time: the report SIGUSR1 prints (not a log line, so printed
        // at any level) comes once the reload is done.
        relay.signal(SIGUSR1)
        #expect(relay.waitForLog("statsrelay.config_reloads{result=\"success\"} 1", seconds: 10), "\(relay.standardError)")
        #expect(!relay.standardError.contains("live counters"), "a notice logged at level error: \(relay.standardError)")
        #expect(!relay.standardError.contains("configuration reloaded"), "\(relay.standardError)")

        try file.write(Self.yaml([backend.spec], extra: "log-level: info\n\(other)"))
        relay.signal(SIGHUP)
        #expect(relay.waitForLog("configuration reloaded", seconds: 10), "\(relay.standardError)")
        let overridden = try #require(relay.logLine(containing: "options given on the command line override the file"))
        #expect(overridden.contains("keys=io-backend"), "\(overridden)")
        #expect(!relay.standardError.contains("key=io-backend"), "the file's io-backend was taken for a change: \(relay.standardError)")
        let applied = try #require(relay.logLine(containing: "key=log-level"))
        #expect(applied.contains("reload: applied") && applied.contains("from=error") && applied.contains("to=info"), "\(applied)")
        relay.signal(SIGUSR1)
        #expect(relay.waitForLog("live counters", seconds: 10), "\(relay.standardError)")
        relay.signal(SIGTERM)
        #expect(relay.waitForExit() == 0)
    }

    @Test("a reload turns health checks on with each backend's own check port, then off; a reload with two backends at one address is refused, counted, and changes nothing", arguments: ioDrivers)
    func healthChecksAndRefusal(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backends = try (0..<2).map { _ in try TestBackend() }
        // Two statsd management ports on one host: the first answers up, the second down. Had
        // the per-backend port not reached the probes, both would check 8126.
        let healthy = try FakeHealthPort()
        let sick = try FakeHealthPort()
        sick.answer("health: down\n")
        let relay = try InProcessRelay(backends: backends, driver: driver)
        #expect(relay.relay.driver == driver)
        var checked = relay.relay.configurationInForce
        checked.healthCheck = .statsdAdmin
        // With fall 1, a single reply later than the timeout takes the healthy backend down:
        // a fake health port's thread not scheduled for 40 ms on a loaded host did (widened, a
        // reply 60 ms late half the time flapped it three times in a second). A quarter second
        // keeps one late reply from being a verdict; the sick one still falls at its first round.
        checked.healthIntervalNanoseconds = 250_000_000
        checked.healthTimeoutNanoseconds = 250_000_000
        checked.healthRise = 1
        checked.healthFall = 1
        checked.backends[0].healthCheckPort = healthy.port
        checked.backends[1].healthCheckPort = sick.port
        let plan = try relay.relay.reload(to: checked)
        #expect(plan.applied.map(\.key) == ["backends", "health-check", "health-interval", "health-timeout", "health-rise", "health-fall"])
        #expect(relay.relay.monitor.waitUntil(timeoutNanoseconds: 5_000_000_000) { $0.map(\.state) == [.up, .down] })
        #expect(relay.relay.routing.current.down == [false, true])

        // Under rehash every line now goes to the healthy backend.
        let lines = (0..<50).map { "health.\($0):1|c" }
        try send(lines, to: relay.address)
        let received = try collect(from: backends, expectedLines: lines.count)
        #expect(received.lines[0].sorted() == lines.sorted())
        #expect(received.lines[1].isEmpty)

        // Same address twice (one spelt as a name): refused whole, the checks and pool unchanged.
        var duplicated = checked
        duplicated.backends = [try BackendAddress(parsing: "localhost:\(backends[0].address.port)"), try BackendAddress(parsing: backends[0].spec)]
        duplicated.healthCheck = .none
        #expect(throws: ConfigurationError.self) { try relay.relay.reload(to: duplicated) }
        #expect(relay.relay.reloads.failed == 1)
        let metrics = PrometheusExposition.render(relay.relay.snapshot(version: "test", startTimeUnixSeconds: 0))
        #expect(metrics.contains("statsrelay_config_reloads_total{result=\"success\"} 1\n"), "\(metrics)")
        #expect(metrics.contains("statsrelay_config_reloads_total{result=\"failure\"} 1\n"))
        #expect(metrics.contains("statsrelay_config_last_reload_successful 0\n"))
        #expect(relay.relay.configurationInForce == checked)
        #expect(relay.relay.routing.current.backends == checked.backends)

        var unchecked = checked
        unchecked.healthCheck = .none
        try relay.relay.reload(to: unchecked)
        #expect(relay.relay.monitor.waitUntil(timeoutNanoseconds: 5_000_000_000) { $0.map(\.state) == [.up, .up] })
        #expect(relay.relay.routing.current.down == [false, false])
        #expect(relay.relay.reloads.succeeded == 2)
        #expect(!relay.relay.reloads.lastReloadFailed)
        let counters = relay.stop()
        #expect(counters[.linesForwarded] == UInt64(lines.count))
    }
}
