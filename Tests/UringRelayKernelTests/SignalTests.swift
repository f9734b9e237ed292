@testable import RelayKernel
import Foundation
import Glibc
import Logging
import Testing
@testable import UringRelay

/// The counter report printed last (at exit, or for the latest `SIGUSR1`), by name.
func lastReport(in log: String) -> [String: UInt64] {
    var counters: [String: UInt64] = [:]
    for line in log.split(separator: "\n") where line.hasPrefix("statsrelay.") {
        let parts = line.split(separator: " ")
        if parts.count == 2, let value = UInt64(parts[1]) { counters[String(parts[0])] = value }
    }
    return counters
}

/// Polls `condition` every 2 ms until it holds or `seconds` pass; returns whether it held.
func poll(seconds: Double, _ condition: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while !condition() {
        if Date() >= deadline { return false }
        usleep(2_000)
    }
    return true
}

/// `statsrelay` with every signal at its default action, as a shell or systemd starts it. A
/// child inherits ignored signals, and this test process ignores `SIGPIPE`, so a relay started
/// directly would pass the tests below even if it did not ignore `SIGPIPE` itself;
/// `env --default-signal` (coreutils 8.31+) resets them before the relay starts.
let defaultSignalsLauncher = URL(fileURLWithPath: "/usr/bin/env")

/// `env`'s arguments that start `statsrelay arguments` with default signal actions, through
/// `launcher` (e.g. `prlimit --nofile=8`) when given.
func defaultSignalsArguments(_ arguments: [String], launcher: [String] = []) -> [String] {
    ["--default-signal"] + launcher + [statsrelayExecutable.path] + adminOff(arguments)
}

/// A relay child started with default signal actions, its standard error collected.
final class DefaultSignalRelay: @unchecked Sendable {  // the log is guarded by `LockedText`
    let process = Process()
    private var reader: PipeReader?
    private var log: LockedText { reader?.text ?? LockedText() }
    private let standardErrorPipe = Pipe()
    /// The `--io-backend` the relay was started with.
    let driver: IOBackendChoice

    /// Starts `statsrelay --io-backend driver arguments`, through `launcher` when given.
    ///
    /// The driver has no default: every test says which one it runs. Once the relay listens
    /// (`listenAddress()`) and once it has exited 0 (`waitForExit`), the driver that ran is
    /// checked, except under `auto`.
    init(driver: IOBackendChoice, _ arguments: [String], launcher: [String] = []) throws {
        self.driver = driver
        process.executableURL = defaultSignalsLauncher
        process.arguments = defaultSignalsArguments(["--io-backend", driver.rawValue] + arguments, launcher: launcher)
        process.standardOutput = FileHandle.nullDevice
        process.standardError = standardErrorPipe
        try process.run()
        reader = PipeReader(standardErrorPipe.fileHandleForReading)
    }

    /// A relay a failed test left running is killed, not left behind.
    deinit {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
    }

    var standardError: String { log.withLock { $0 } }

    /// Polls the log until it contains `text`, at most `seconds`.
    func waitForLog(_ text: String, seconds: Double = 20) -> Bool { poll(seconds: seconds) { standardError.contains(text) } }

    /// The address from the `listening on HOST:PORT` start-up line; checks the driver that runs.
    func listenAddress(sourceLocation: SourceLocation = #_sourceLocation) throws -> SocketAddress {
        #expect(waitForLog("listening on "), "relay did not start: \(standardError)", sourceLocation: sourceLocation)
        let line = try #require(standardError.split(separator: "\n").first { $0.contains("listening on ") }, sourceLocation: sourceLocation)
        let port = try #require(line.split(separator: ":").last.flatMap { UInt16($0) }, sourceLocation: sourceLocation)
        if driver != .auto { expectDriverRan(driver, pid: process.processIdentifier, log: standardError, sourceLocation: sourceLocation) }
        return SocketAddress(numericHost: "127.0.0.1", port: port)!
    }

    func signal(_ number: Int32) { kill(process.processIdentifier, number) }

    /// Waits for the exit, at most `seconds` (then kills it), and returns the status; `nil`
    /// when it did not exit in time or was killed by a signal. After an exit 0, checks that
    /// the exit report names the driver the relay was told to use.
    func waitForExit(seconds: Double = 10, sourceLocation: SourceLocation = #_sourceLocation) -> Int32? {
        let exited = poll(seconds: seconds) { !process.isRunning }
        if !exited { signal(SIGKILL) }
        process.waitUntilExit()
        #expect(reader?.waitForEnd(seconds: 5) == true, "standard error did not end", sourceLocation: sourceLocation)
        guard exited, process.terminationReason == .exit else { return nil }
        if process.terminationStatus == 0 && driver != .auto {
            expectReportNames(driver, in: standardError, sourceLocation: sourceLocation)
        }
        return process.terminationStatus
    }
}

@Suite("signals and a broken log never stop the relay", .serialized, .timeLimit(.minutes(1)), .onOwnThread)
struct SignalTests {
    @Test("SIGHUP, SIGUSR2, SIGPIPE, SIGXFSZ, SIGALRM, SIGVTALRM, SIGPROF, SIGIO, SIGPWR, SIGSTKFLT and SIGUSR1 leave the relay relaying, each noticed in the log; SIGUSR1 logs the live counters; SIGTERM then delivers every line", arguments: ioDrivers)
    func everydaySignals(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backends = try (0..<2).map { _ in try TestBackend() }
        let relay = try DefaultSignalRelay(driver: driver, ["--bind", "127.0.0.1", "--port", "0", "--threads", "1"] + backends.map(\.spec))
        let address = try relay.listenAddress()
        var sent: [String] = []
        var delivered: [String] = []
        /// Sends a batch, delivers `signal` while it is in flight, and waits for the batch at the backends.
        func batch(_ name: String, signal: Int32?) throws {
            let lines = (0..<200).map { "\(name).\($0):1|c" }
            try send(lines, to: address)
            sent += lines
            if let signal { relay.signal(signal) }
            let received = try collect(from: backends, expectedLines: lines.count, seconds: 5)
            delivered += received.lines.flatMap { $0 }
            #expect(received.totalLines == lines.count, "after \(name): \(relay.standardError)")
            #expect(relay.process.isRunning, "the relay died after \(name)")
        }

        try batch("hup", signal: SIGHUP)
        #expect(relay.waitForLog("signal=SIGHUP [statsrelay] nothing to reload", seconds: 5))
        try batch("usr2", signal: SIGUSR2)
        #expect(relay.waitForLog("signal=SIGUSR2 [statsrelay] ignored", seconds: 5))
        try batch("pipe", signal: SIGPIPE)
        // Ignored outright: a log write past `ulimit -f` then fails with EFBIG, counted.
        try batch("xfsz", signal: SIGXFSZ)
        // Their default action ends a process at once; the relay notices each and goes on.
        for (name, number) in [
            ("SIGALRM", SIGALRM), ("SIGVTALRM", SIGVTALRM), ("SIGPROF", SIGPROF), ("SIGIO", SIGIO), ("SIGPWR", SIGPWR),
            ("SIGSTKFLT", SIGSTKFLT),
        ] {
            try batch(name.lowercased(), signal: number)
            #expect(relay.waitForLog("signal=\(name) [statsrelay] ignored", seconds: 5), "\(relay.standardError)")
        }
        try batch("before-usr1", signal: nil)

        // Every line sent so far has reached a backend, so each worker's published counters
        // catch up within one publication interval, and its backends' lines count as sent once
        // no refusal came for 200 ms (plus 50 ms of slack): ask again until a report shows them all.
        var reports = 0
        var live: [String: UInt64] = [:]
        let caughtUp = poll(seconds: 5) {
            reports += 1
            relay.signal(SIGUSR1)
            let complete = poll(seconds: 2) {
                let log = relay.standardError
                return log.components(separatedBy: "live counters").count - 1 == reports
                    && log.components(separatedBy: "statsrelay.log_write_errors ").count - 1 == reports
            }
            guard complete else { return false }
            live = lastReport(in: relay.standardError)
            let confirmed = (0..<2).map { live["statsrelay.backend.lines_sent{backend=\"\(backends[$0].spec)\"}"] ?? 0 }
            return live["statsrelay.lines_forwarded"] == UInt64(sent.count) && confirmed.reduce(0, +) == UInt64(sent.count)
        }
        #expect(caughtUp, "no SIGUSR1 report showed \(sent.count) lines forwarded: \(live)")
        #expect(live["statsrelay.datagrams_received"] == UInt64(sent.count))
        #expect(live["statsrelay.lines_received"] == UInt64(sent.count))
        #expect(live["statsrelay.log_write_errors"] == 0)
        let perBackend = (0..<2).map { live["statsrelay.backend.lines_sent{backend=\"\(backends[$0].spec)\"}"] ?? 0 }
        #expect(perBackend.reduce(0, +) == UInt64(sent.count))
        #expect(live["statsrelay.backend.up{backend=\"\(backends[0].spec)\"}"] == 1)
        expectReportNames(driver, in: relay.standardError)
        try batch("after-usr1", signal: nil)

        relay.signal(SIGTERM)
        #expect(relay.waitForExit() == 0)
        delivered += try collect(from: backends, expectedLines: 0, seconds: 0.2).lines.flatMap { $0 }
        #expect(delivered.sorted() == sent.sorted())
        let atExit = lastReport(in: relay.standardError)
        #expect(atExit["statsrelay.lines_forwarded"] == UInt64(sent.count))
        #expect(atExit["statsrelay.log_write_errors"] == 0)
    }

    /// nginx's graceful stop; its default action is a core dump with nothing flushed.
    @Test("SIGQUIT stops the relay as SIGTERM does: exit 0, every line delivered, the stop logged with its signal", arguments: ioDrivers)
    func quitIsAGracefulStop(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backends = try (0..<2).map { _ in try TestBackend() }
        // A long flush interval: what the relay took before SIGQUIT waits in open batches, and
        // what it had not yet read waits in its socket; the stop drains and flushes both.
        let relay = try DefaultSignalRelay(
            driver: driver, ["--bind", "127.0.0.1", "--port", "0", "--threads", "1", "--flush-interval", "10s"] + backends.map(\.spec))
        let address = try relay.listenAddress()
        let lines = (0..<300).map { "quit.\($0):1|c" }
        try send(lines, to: address)
        relay.signal(SIGQUIT)
        #expect(relay.waitForExit() == 0, "\(relay.standardError)")
        #expect(relay.standardError.contains("signal=SIGQUIT [statsrelay] stopping"), "\(relay.standardError)")
        let received = try collect(from: backends, expectedLines: lines.count, seconds: 5)
        #expect(received.lines.flatMap { $0 }.sorted() == lines.sorted())
    }

    @Test("a log reader that goes away costs nothing: stderr's pipe closed after start-up, lines sent, SIGTERM: exit 0, every line delivered", arguments: ioDrivers)
    func brokenLogPipe(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backends = try (0..<2).map { _ in try TestBackend() }
        let process = Process()
        process.executableURL = defaultSignalsLauncher
        process.arguments = defaultSignalsArguments([
            "--bind", "127.0.0.1", "--port", "0", "--threads", "1", "--io-backend", driver.rawValue, "--log-level", "debug",
        ] + backends.map(\.spec))
        let standardError = Pipe()
        process.standardError = standardError
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        // Read until the start-up line, then close the only read end: every later log write
        // meets a pipe without a reader (EPIPE, and SIGPIPE unless ignored).
        var log = ""
        let deadline = Date().addingTimeInterval(20)
        while !log.contains("listening on "), Date() < deadline {
            let data = standardError.fileHandleForReading.availableData
            if data.isEmpty { break }
            log += String(decoding: data, as: UTF8.self)
        }
        let line = try #require(log.split(separator: "\n").first { $0.contains("listening on ") }, "no start-up line: \(log)")
        let port = try #require(line.split(separator: ":").last.flatMap { UInt16($0) })
        expectDriverRan(driver, pid: process.processIdentifier, log: log)
        try standardError.fileHandleForReading.close()
        let address = SocketAddress(numericHost: "127.0.0.1", port: port)!

        let lines = (0..<500).map { "broken.log.\($0):1|c" }
        try send(Array(lines[..<250]), to: address)
        // Log lines while the relay runs: the SIGHUP notice and a whole SIGUSR1 report.
        kill(process.processIdentifier, SIGHUP)
        kill(process.processIdentifier, SIGUSR1)
        try send(Array(lines[250...]), to: address)
        let received = try collect(from: backends, expectedLines: lines.count, seconds: 5)
        #expect(process.isRunning)
        kill(process.processIdentifier, SIGTERM)
        let exited = poll(seconds: 10) { !process.isRunning }
        if !exited { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
        #expect(exited)
        #expect(process.terminationReason == .exit)
        #expect(process.terminationStatus == 0)
        let late = try collect(from: backends, expectedLines: 0, seconds: 0.2)
        #expect((received.lines.flatMap { $0 } + late.lines.flatMap { $0 }).sorted() == lines.sorted())
    }
}

@Suite("the log writer", .serialized, .onOwnThread)
struct LogWriterTests {
    @Test("a write to a pipe without a reader is dropped and counted, not fatal")
    func closedReader() throws {
        // As the relay does: a write to a closed pipe must fail with EPIPE, not kill the process.
        signal(SIGPIPE, SIG_IGN)
        var ends: [Int32] = [0, 0]
        try #require(pipe(&ends) == 0)
        close(ends[0])
        defer { close(ends[1]) }
        let writer = LogWriter(descriptor: ends[1])
        writer.write("first\n")
        writer.write("second\n")
        #expect(writer.failedWrites == 2)
    }

    @Test("a reader that has fallen behind never holds up a log line: it is dropped and counted at once", .timeLimit(.minutes(1)))
    func fullPipe() throws {
        var ends: [Int32] = [0, 0]
        try #require(pipe(&ends) == 0)
        defer { close(ends[0]); close(ends[1]) }
        // Fill the pipe (non-blocking, so filling stops at EAGAIN), then make it blocking again:
        // a plain write(2) would now wait for the reader.
        let flags = fcntl(ends[1], F_GETFL)
        _ = fcntl(ends[1], F_SETFL, flags | O_NONBLOCK)
        let filler = [UInt8](repeating: 0x2E, count: 4096)
        var filled = 0
        while filled < 16 << 20 {
            let written = filler.withUnsafeBytes { Glibc.write(ends[1], $0.baseAddress, $0.count) }
            if written <= 0 { break }
            filled += written
        }
        _ = fcntl(ends[1], F_SETFL, flags)
        let writer = LogWriter(descriptor: ends[1])
        let started = MonotonicClock.nanoseconds()
        writer.write("a log line\n")
        #expect(writer.failedWrites == 1)
        #expect(MonotonicClock.nanoseconds() - started < 1_000_000_000, "the write waited for the reader")

        // Once the reader has drained it, lines go through again, whole.
        var sink = [UInt8](repeating: 0, count: 65_536)
        var drained = 0
        while drained < filled {
            let count = sink.withUnsafeMutableBytes { read(ends[0], $0.baseAddress, $0.count) }
            if count <= 0 { break }
            drained += count
        }
        writer.write("next line\n")
        #expect(writer.failedWrites == 1)
        let count = sink.withUnsafeMutableBytes { read(ends[0], $0.baseAddress, $0.count) }
        #expect(String(decoding: sink[..<max(count, 0)], as: UTF8.self) == "next line\n")
    }

    @Test("the relay's log handler writes swift-log's line format through the writer")
    func handlerFormat() throws {
        var ends: [Int32] = [0, 0]
        try #require(pipe(&ends) == 0)
        defer { close(ends[0]); close(ends[1]) }
        var logger = Logger(label: "statsrelay") { RelayLogHandler(label: $0, level: .notice, writer: LogWriter(descriptor: ends[1])) }
        logger[metadataKey: "worker"] = "0"
        logger.info("below the level")
        logger.notice("hello", metadata: ["signal": "SIGHUP"])
        var buffer = [UInt8](repeating: 0, count: 4096)
        let count = buffer.withUnsafeMutableBytes { read(ends[0], $0.baseAddress, $0.count) }
        let text = String(decoding: buffer[..<max(count, 0)], as: UTF8.self)
        #expect(text.hasSuffix(" notice statsrelay: signal=SIGHUP worker=0 [UringRelayKernelTests] hello\n"), "\(text)")
        #expect(text.split(separator: "\n").count == 1)
    }
}
