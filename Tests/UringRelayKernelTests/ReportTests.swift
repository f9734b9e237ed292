@testable import RelayKernel
import Foundation
import Glibc
import Testing
@testable import UringRelay

/// What the counter report (at exit and on `SIGUSR1`) promises beyond the counters themselves:
/// the io driver in use, each backend's health history, and an exit that a stalled log reader
/// cannot hold up for more than a second.
@Suite("The counter report: io driver, backend state, a slow log reader", .serialized, .timeLimit(.minutes(1)), .onOwnThread)
struct ReportTests {
    @Test("statsrelay.io_backend{driver} names the driver that runs, in every SIGUSR1 report and at exit",
          arguments: ioDrivers + [.auto])
    func reportNamesTheDriver(choice: IOBackendChoice) throws {
        try requireDriver(choice)
        let driver = driverExpected(for: choice)
        let backend = try TestBackend()
        let relay = try RelayProcess(driver: choice, ["--bind", "127.0.0.1", "--port", "0", "--threads", "1", backend.spec])
        _ = try relay.listenAddress()
        // What ran, told by the kernel rather than by the relay: an io_uring is open exactly
        // when the io_uring driver runs.
        #expect((openRings(pid: relay.process.processIdentifier) > 0) == (driver == .uring))
        for _ in 0..<2 {
            let report = try #require(relay.liveReport(), "no SIGUSR1 report: \(relay.standardError)")
            let named = report.filter { $0.key.hasPrefix("statsrelay.io_backend{") }
            #expect(named == ["statsrelay.io_backend{driver=\"\(driver.rawValue)\"}": 1], "\(named)")
        }
        relay.signal(SIGTERM)
        #expect(relay.waitForExit() == 0)
        let atExit = relay.standardError.split(separator: "\n").filter { $0.hasPrefix("statsrelay.io_backend{") }
        // Two live reports and the exit report, each naming the driver once.
        #expect(atExit == Array(repeating: "statsrelay.io_backend{driver=\"\(driver.rawValue)\"} 1", count: 3), "\(atExit)")
    }

    @Test("state_changes counts a backend's ups and downs; state_seconds the whole seconds since its last change (or the start)",
          arguments: ioDrivers)
    func backendStateHistory(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let spawned = Date()
        let (backends, twins) = try backendsWithHealthTwins(2)
        let relay = try RelayProcess(driver: driver, [
            "--bind", "127.0.0.1", "--port", "0", "--threads", "1", "--health-check", "tcp", "--health-interval", "100ms",
            "--health-timeout", "100ms", "--health-rise", "2", "--health-fall", "2",
        ] + backends.map(\.spec))
        _ = try relay.listenAddress()
        let listening = Date()
        let changed = backends[0].spec
        func key(_ name: String, _ backend: TestBackend) -> String { "statsrelay.backend.\(name){backend=\"\(backend.spec)\"}" }

        twins[0].close()
        #expect(relay.waitForLog("] backend down", seconds: 10), "\(relay.standardError)")
        #expect(relay.logLine(containing: "] backend down")?.contains("backend=\(changed)") == true)
        let reopened = Date()
        try twins[0].reopen()
        #expect(relay.waitForLog("] backend up", seconds: 10), "\(relay.standardError)")
        #expect(relay.logLine(containing: "] backend up")?.contains("backend=\(changed)") == true)
        let upLogged = Date()

        // Ask until backend 0's state_seconds reaches 1: it must, once a second has passed since
        // it came up, and cannot before a second has passed since it was reopened.
        var report: [String: UInt64] = [:]
        var requested = Date()
        var seen = Date()
        let reached = poll(seconds: 5) {
            requested = Date()
            report = relay.liveReport() ?? [:]
            seen = Date()
            return (report[key("state_seconds", backends[0])] ?? 0) >= 1
        }
        #expect(reached, "state_seconds never reached 1: \(report)")
        let seconds = report[key("state_seconds", backends[0])] ?? 0
        #expect(seconds == 1, "the first report past a second says 1, not \(seconds)")
        #expect(seen.timeIntervalSince(reopened) >= 1, "1 s shown \(seen.timeIntervalSince(reopened)) s after the backend came back")
        #expect(requested.timeIntervalSince(upLogged) <= 1 + 0.5, "still under 1 s \(requested.timeIntervalSince(upLogged)) s after it was up")
        #expect(report[key("state_changes", backends[0])] == 2, "down, then up: \(report)")
        #expect(report[key("up", backends[0])] == 1)
        // The other backend never changed: its seconds run from the start.
        let unchanged = report[key("state_seconds", backends[1])] ?? 0
        #expect(report[key("state_changes", backends[1])] == 0)
        #expect(report[key("up", backends[1])] == 1)
        #expect(Double(unchanged) >= requested.timeIntervalSince(listening).rounded(.down))
        #expect(Double(unchanged) <= seen.timeIntervalSince(spawned))

        relay.signal(SIGTERM)
        #expect(relay.waitForExit() == 0)
        let atExit = lastReport(in: relay.standardError)
        #expect(atExit[key("state_changes", backends[0])] == 2)
        #expect(atExit[key("state_changes", backends[1])] == 0)
        #expect((atExit[key("state_seconds", backends[0])] ?? 0) >= 1)
    }

    /// Starts a relay whose standard error is a pipe this test holds both ends of, and returns
    /// it with the start-up log read so far.
    static func relayWithOwnedStandardError(
        driver: IOBackendChoice, backend: TestBackend, ends: [Int32]
    ) throws -> (process: Process, log: String) {
        let process = Process()
        process.executableURL = statsrelayExecutable
        process.arguments = adminOff([
            "--io-backend", driver.rawValue, "--bind", "127.0.0.1", "--port", "0", "--threads", "1",
            "--shutdown-timeout", "100ms", backend.spec,
        ])
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle(fileDescriptor: ends[1], closeOnDealloc: false)
        try process.run()
        var log = ""
        var buffer = [UInt8](repeating: 0, count: 4096)
        let deadline = Date().addingTimeInterval(20)
        while !log.contains("listening on "), Date() < deadline, process.isRunning {
            var poller = pollfd(fd: ends[0], events: Int16(POLLIN), revents: 0)
            guard Glibc.poll(&poller, 1, 100) == 1 else { continue }
            let count = buffer.withUnsafeMutableBytes { read(ends[0], $0.baseAddress, $0.count) }
            if count > 0 { log += String(decoding: buffer[..<count], as: UTF8.self) }
        }
        return (process, log)
    }

    /// Fills the pipe whose write end is `descriptor` (non-blocking writes until `EAGAIN`).
    static func fill(_ descriptor: Int32) -> Int {
        let flags = fcntl(descriptor, F_GETFL)
        _ = fcntl(descriptor, F_SETFL, flags | O_NONBLOCK)
        defer { _ = fcntl(descriptor, F_SETFL, flags) }
        let filler = [UInt8](repeating: UInt8(ascii: "\n"), count: 4096)
        var filled = 0
        while filled < 16 << 20 {
            let written = filler.withUnsafeBytes { write(descriptor, $0.baseAddress, $0.count) }
            if written <= 0 { break }
            filled += written
        }
        return filled
    }

    /// Reads the pipe until every writer has closed it, at most `seconds`.
    static func readToEnd(_ descriptor: Int32, seconds: Double) -> String {
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65_536)
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            var poller = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
            guard Glibc.poll(&poller, 1, 100) == 1 else { continue }
            let count = buffer.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
            if count <= 0 { break }
            bytes += buffer[..<count]
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// How the log reader behaves once the relay is told to stop.
    enum Reader: String, CaseIterable, CustomTestStringConvertible {
        /// Never reads again: the exit report must give up after a second.
        case stalled
        /// Reads again 300 ms after the signal: the exit report must wait for it, whole.
        case slow
        var testDescription: String { rawValue }
    }

    @Test("the exit report waits at most a second for a log reader that is behind: a stalled one costs the report, never the exit; a slow one gets it whole",
          arguments: ioDrivers, Reader.allCases)
    func exitReportAndSlowReader(driver: IOBackendChoice, reader: Reader) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        // Close-on-exec, so no other child started meanwhile inherits the write end (the
        // relay gets it as its standard error all the same).
        var ends: [Int32] = [0, 0]
        try #require(pipe(&ends) == 0)
        for end in ends { _ = fcntl(end, F_SETFD, FD_CLOEXEC) }
        defer { close(ends[0]) }
        let (process, startup) = try Self.relayWithOwnedStandardError(driver: driver, backend: backend, ends: ends)
        defer { if process.isRunning { kill(process.processIdentifier, SIGKILL) } }
        try #require(startup.contains("listening on "), "relay did not start: \(startup)")
        expectDriverRan(driver, pid: process.processIdentifier, log: startup)
        // Only the child may hold the write end open from here, or the pipe never ends.
        #expect(Self.fill(ends[1]) > 0)
        let exited = DispatchSemaphore(value: 0)
        process.terminationHandler = { _ in exited.signal() }
        close(ends[1])
        let signalled = Date()
        kill(process.processIdentifier, SIGTERM)
        var rest = ""
        switch reader {
        case .stalled:
            // The stop (100 ms budget, at most 250 ms of confirmation within it) plus a second
            // for the report, plus slack for this side.
            let ended = exited.wait(timeout: .now() + 0.1 + 1 + stopSlackSeconds) == .success
            let elapsed = Date().timeIntervalSince(signalled)
            #expect(ended, "the relay was still running \(elapsed) s after SIGTERM with a stalled log reader")
            #expect(elapsed < 0.1 + 1 + stopSlackSeconds)
            rest = Self.readToEnd(ends[0], seconds: 5)
        case .slow:
            usleep(300_000)  // the reader's slowness, the scenario itself: not a synchronisation
            rest = Self.readToEnd(ends[0], seconds: 5)
            #expect(exited.wait(timeout: .now() + 5) == .success)
        }
        process.waitUntilExit()
        #expect(process.terminationReason == .exit && process.terminationStatus == 0, "status \(process.terminationStatus): \(rest.suffix(2_000))")
        let report = rest.split(separator: "\n").filter { $0.hasPrefix("statsrelay.") }
        switch reader {
        case .stalled:
            #expect(!report.contains { $0.hasPrefix("statsrelay.log_write_errors ") }, "the report could not have been written whole")
        case .slow:
            // Whole: from the first counter to the last line, the log's own write errors, which
            // count the log lines dropped while the pipe was full (the stop notice at least).
            #expect(report.first?.hasPrefix("statsrelay.datagrams_received ") == true, "\(report.prefix(3))")
            expectReportNames(driver, in: rest)
            let errors = report.last.flatMap { $0.hasPrefix("statsrelay.log_write_errors ") ? UInt64($0.split(separator: " ").last ?? "") : nil }
            #expect((errors ?? 0) >= 1, "\(report.suffix(3))")
        }
    }
}
