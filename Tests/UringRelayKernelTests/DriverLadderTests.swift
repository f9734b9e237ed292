@testable import RelayKernel
import Foundation
import Glibc
import Logging
import Synchronization
import Testing
@testable import UringRelay

/// A failure the io_uring probe may report, and a phrase the operator's advice must hold
/// (`nil`: no advice is known, the reason is the failure alone).
struct ProbeFailureCase: Sendable, CustomTestStringConvertible {
    var failure: UringProbeFailure
    var advice: String?
    var testDescription: String { failure.description }

    static let table: [ProbeFailureCase] = [
        ProbeFailureCase(failure: UringProbeFailure(operation: "io_uring_setup", errno: .notPermitted), advice: permissionAdvice),
        ProbeFailureCase(failure: UringProbeFailure(operation: "io_uring_setup", errno: .outOfMemory), advice: "ulimit -l"),
        ProbeFailureCase(failure: UringProbeFailure(operation: "io_uring_setup", errno: .noFunction), advice: "has no io_uring"),
        ProbeFailureCase(
            failure: UringProbeFailure(operation: "multishot recvmsg (Linux 6.0+)", errno: .invalidArgument), advice: "rejected an io_uring feature"),
        ProbeFailureCase(failure: UringProbeFailure(operation: "io_uring opcode 27", detail: "not supported by kernel 5.4"), advice: nil),
    ]
}

/// What the relay must say about an `EPERM` from io_uring on this host: with the
/// `kernel.io_uring_disabled` sysctl at 0 only a seccomp profile can be the cause.
let permissionAdvice: String = {
    guard let text = try? String(contentsOfFile: "/proc/sys/kernel/io_uring_disabled", encoding: .utf8) else {
        return "seccomp profile"
    }
    let value = text.trimmingCharacters(in: .whitespacesAndNewlines)
    return value == "0"
        ? "io_uring is blocked by a seccomp filter (kernel.io_uring_disabled = 0, so the sysctl is not the cause)"
        : "kernel.io_uring_disabled = \(value)"
}()

/// A relay on one loopback backend whose io_uring probe is replaced, its log captured.
final class ProbedRelay: @unchecked Sendable {  // set up once; the probe's record is behind a Mutex
    /// The settings the probe was called with, once per call.
    final class ProbeRecord: Sendable {
        let calls = Mutex<[WorkerSettings]>([])
    }

    let relay: Relay
    let log = LockedText()
    let backend: TestBackend
    let record = ProbeRecord()

    init(choice: IOBackendChoice, probe: UringProbeFailure?, configure: (inout RelayConfiguration) -> Void = { _ in }) throws {
        backend = try TestBackend()
        var configuration = RelayConfiguration(backends: [try BackendAddress(parsing: backend.spec)])
        configuration.bindHost = "127.0.0.1"
        configuration.port = 0
        configuration.threads = 1
        configuration.ioBackend = choice
        configure(&configuration)
        let store = log
        let record = record
        relay = try Relay(
            configuration: configuration, logger: Logger(label: "test") { _ in CapturingLogHandler(store: store) },
            uringProbe: { settings in
                record.calls.withLock { $0.append(settings) }
                return probe
            })
    }

    var logText: String { log.withLock { $0 } }
}

/// Sends `count` two-line datagrams to `address` and checks every line arrives at `backend`
/// exactly once; returns the lines sent.
@discardableResult
func relayExactly(datagrams count: Int, to address: SocketAddress, backend: TestBackend, prefix: String) throws -> [String] {
    var expected: [String] = []
    var datagrams: [String] = []
    for index in 0..<count {
        let lines = ["\(prefix).a.\(index):\(index)|c", "\(prefix).b.\(index):\(index)|ms"]
        expected += lines
        datagrams.append(lines.joined(separator: "\n"))
    }
    try send(datagrams, to: address)
    let received = try collect(from: [backend], expectedLines: expected.count)
    #expect(received.lines[0].sorted() == expected.sorted(), "\(received.totalLines) of \(expected.count) lines arrived")
    return expected
}

@Suite("The auto ladder: io_uring when it can run, else the portable driver and why", .serialized, .timeLimit(.minutes(2)), .onOwnThread)
struct DriverLadderTests {
    @Test("auto: a failed io_uring probe runs the portable driver, logs why and what to do, and relays every line", arguments: ProbeFailureCase.table)
    func autoFallsBack(probe: ProbeFailureCase) throws {
        let harness = try ProbedRelay(choice: .auto, probe: probe.failure) { $0.receiveBuffers = 64 }
        let address = try harness.relay.start().listen
        #expect(harness.relay.driver == .portable)
        let reason = try #require(harness.relay.driverReason)
        if let advice = probe.advice {
            #expect(reason.hasPrefix(probe.failure.description + "; "), "\(reason)")
            #expect(reason.contains(advice), "\(reason)")
        } else {
            #expect(reason == probe.failure.description)
        }
        #expect(occurrences(of: "io_backend=portable reason=\"\(reason)\"", in: harness.logText) == 1, "\(harness.logText)")
        let probed = harness.record.calls.withLock { $0 }
        #expect(probed.count == 1)
        #expect(probed.first?.receiveBuffers == 64, "probed with the workers' receive buffers")
        #expect(probed.first?.maxDatagramBytes == harness.relay.configuration.maxDatagramBytes)
        let expected = try relayExactly(datagrams: 300, to: address, backend: harness.backend, prefix: "ladder")
        harness.relay.stop()
        let (counters, failures) = harness.relay.wait()
        #expect(failures.isEmpty)
        #expect(counters[.datagramsReceived] == 300)
        #expect(counters[.linesForwarded] == UInt64(expected.count))
        #expect(counters[.linesSent, backend: 0] == UInt64(expected.count))
    }

    @Test("uring: a failed io_uring probe makes start() throw DriverUnavailable with the reason and advice; nothing starts")
    func uringDemandedThrows() throws {
        let failure = UringProbeFailure(operation: "io_uring_setup", errno: .notPermitted)
        let harness = try ProbedRelay(choice: .uring, probe: failure)
        let error = try #require(throws: Relay.DriverUnavailable.self) { try harness.relay.start() }
        #expect(error.reason.hasPrefix("io_uring_setup: Operation not permitted (errno 1); "), "\(error.reason)")
        #expect(error.reason.contains(permissionAdvice), "\(error.reason)")
        #expect(error.description == "io_backend=uring is unavailable: \(error.reason)")
        #expect(harness.relay.listenAddress == nil, "no worker may start")
        #expect(!harness.logText.contains("io_backend=portable"))
    }

    @Test("portable: io_uring is not probed and the portable driver relays")
    func portableNeverProbes() throws {
        let harness = try ProbedRelay(choice: .portable, probe: UringProbeFailure(operation: "io_uring_setup", errno: .notPermitted))
        let address = try harness.relay.start().listen
        #expect(harness.record.calls.withLock { $0.isEmpty })
        #expect(harness.relay.driver == .portable)
        try relayExactly(datagrams: 50, to: address, backend: harness.backend, prefix: "portable")
        harness.relay.stop()
        #expect(harness.relay.wait().failures.isEmpty)
    }

    @Test("auto: a passing io_uring probe runs the io_uring driver and says so")
    func autoKeepsUring() throws {
        try requireDriver(.uring)
        let harness = try ProbedRelay(choice: .auto, probe: nil)
        let address = try harness.relay.start().listen
        #expect(harness.relay.driver == .uring)
        #expect(harness.relay.driverReason == nil)
        #expect(occurrences(of: "io_backend=uring", in: harness.logText) == 1, "\(harness.logText)")
        try relayExactly(datagrams: 50, to: address, backend: harness.backend, prefix: "uring")
        harness.relay.stop()
        #expect(harness.relay.wait().failures.isEmpty)
    }

    // MARK: - A real child relay with io_uring taken away

    /// Runs a child relay under `launcher` on one backend; cancels the test when the launcher
    /// itself could not apply the restriction.
    private func launch(_ launcher: RelayLauncher, _ extra: [String], backend: TestBackend) throws -> RelayProcess {
        let python = try RelayLauncher.requirePython()
        let child = try RelayProcess(
            driver: .auto, launcher: launcher.command(python: python), ["--bind", "127.0.0.1", "--port", "0"] + extra + [backend.spec])
        _ = child.waitForLog("listening on ")
        if !child.process.isRunning, child.waitForExit() == 3, child.standardError.contains("launcher: ") {
            try Test.cancel(Comment(rawValue: "cannot restrict the child: \(child.standardError)"))
        }
        return child
    }

    @Test("seccomp blocking io_uring_setup (as Docker's default profile): auto runs portable, says why, relays, exits 0")
    func seccompAuto() throws {
        let backend = try TestBackend()
        let child = try launch(.seccompBlocksIOUringSetup, ["--threads", "1"], backend: backend)
        let address = try child.listenAddress()
        let line = child.logLine(containing: "io_backend=") ?? "no io_backend line in: \(child.standardError)"
        #expect(line.contains("io_backend=portable reason=\"io_uring_setup: Operation not permitted (errno 1); \(permissionAdvice)"), "\(line)")
        #expect(openRings(pid: child.process.processIdentifier) == 0, "the portable driver holds no io_uring")
        let expected = try relayExactly(datagrams: 200, to: address, backend: backend, prefix: "seccomp")
        child.signal(SIGTERM)
        #expect(child.waitForExit() == 0, "\(child.standardError)")
        expectReportNames(.portable, in: child.standardError)
        #expect(child.counter("statsrelay.lines_forwarded") == UInt64(expected.count))
        #expect(child.counter("statsrelay.datagrams_received") == 200)
    }

    @Test("seccomp blocking io_uring_setup: --io-backend uring exits 69 (EX_UNAVAILABLE) with the reason and advice")
    func seccompUringDemanded() throws {
        let backend = try TestBackend()
        let child = try launch(.seccompBlocksIOUringSetup, ["--threads", "1", "--io-backend", "uring"], backend: backend)
        let status = child.waitForExit()
        #expect(status == 69, "exit status \(status.map(String.init) ?? "none"): \(child.standardError)")
        #expect(
            child.standardError.contains(
                "io_backend=uring is unavailable: io_uring_setup: Operation not permitted (errno 1); \(permissionAdvice)"),
            "\(child.standardError)")
        #expect(!child.standardError.contains("listening on"))
    }

    /// A memlock limit below one ring's pinned memory (the probe fails), and one that lets the
    /// probe's ring through but not every worker's (each worker pins its own ring and
    /// provided-buffer ring, about 100K with the default sizes; and the probe's ring is
    /// released by the kernel asynchronously, so it may still count when the workers start).
    static let memlockCases: [(bytes: Int, threads: Int)] = [(64 << 10, 1), (160 << 10, 2)]

    @Test("RLIMIT_MEMLOCK too low and no CAP_IPC_LOCK: auto runs portable with the memlock advice, relays, exits 0", arguments: memlockCases)
    func memlockAuto(bytes: Int, threads: Int) throws {
        try requireDriver(.uring)
        let backend = try TestBackend()
        let child = try launch(.memlockLimit(bytes: bytes), ["--threads", "\(threads)"], backend: backend)
        if child.standardError.contains("io_backend=uring") && child.standardError.contains("listening on ") {
            child.signal(SIGTERM)
            _ = child.waitForExit()
            try Test.cancel("this kernel does not account io_uring memory to RLIMIT_MEMLOCK")
        }
        try #require(child.standardError.contains("listening on ") && child.process.isRunning, "the relay is not running: \(child.standardError)")
        let address = try child.listenAddress()
        let line = child.logLine(containing: "io_backend=") ?? "no io_backend line in: \(child.standardError)"
        #expect(line.contains("io_backend=portable reason=\""), "\(line)")
        #expect(openRings(pid: child.process.processIdentifier) == 0, "the portable driver holds no io_uring")
        #expect(line.contains("Cannot allocate memory (errno 12)"), "\(line)")
        let advised = Self.advisedLockedKiB(threads: threads)
        #expect(line.contains("ulimit -l \(advised)") && line.contains("LimitMEMLOCK=\(advised)K"), "\(line)")
        let expected = try relayExactly(datagrams: 200, to: address, backend: backend, prefix: "memlock")
        child.signal(SIGTERM)
        #expect(child.waitForExit() == 0, "\(child.standardError)")
        expectReportNames(.portable, in: child.standardError)
        #expect(child.counter("statsrelay.lines_forwarded") == UInt64(expected.count))
    }

    /// The locked-memory limit the advice names for the default configuration with `threads`.
    static func advisedLockedKiB(threads: Int) -> Int {
        var configuration = RelayConfiguration(backends: [try! BackendAddress(parsing: "127.0.0.1:9")])
        configuration.threads = threads
        return StartupDiagnosis.suggestedLockedBytes(configuration) >> 10
    }

    @Test("the memlock the advice names is enough: with it, auto runs io_uring", arguments: [1, 2])
    func memlockAdviceSuffices(threads: Int) throws {
        try requireDriver(.uring)
        let backend = try TestBackend()
        let advised = Self.advisedLockedKiB(threads: threads)
        let child = try launch(.memlockLimit(bytes: advised << 10), ["--threads", "\(threads)"], backend: backend)
        try #require(child.standardError.contains("listening on ") && child.process.isRunning, "the relay is not running: \(child.standardError)")
        let address = try child.listenAddress()
        let line = child.logLine(containing: "io_backend=") ?? "no io_backend line in: \(child.standardError)"
        #expect(line.contains("io_backend=uring") && !line.contains("reason="), "\(line)")
        #expect(openRings(pid: child.process.processIdentifier) == threads, "one ring per worker")
        let expected = try relayExactly(datagrams: 100, to: address, backend: backend, prefix: "advised")
        child.signal(SIGTERM)
        #expect(child.waitForExit() == 0, "\(child.standardError)")
        expectReportNames(.uring, in: child.standardError)
        #expect(child.counter("statsrelay.lines_forwarded") == UInt64(expected.count))
    }
}
