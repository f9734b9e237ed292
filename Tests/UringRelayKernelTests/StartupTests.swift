import Foundation
import Glibc
@testable import RelayKernel
import RoutingReference
import Testing
@testable import UringRelay

/// The command that runs the next one under an open-files limit of `limit` (soft and hard):
/// util-linux's `prlimit` where present, else bash's `ulimit -n`.
func openFilesLimit(_ limit: Int) -> [String] {
    if FileManager.default.isExecutableFile(atPath: "/usr/bin/prlimit") { return ["/usr/bin/prlimit", "--nofile=\(limit)"] }
    return ["/bin/bash", "-c", "ulimit -n \(limit) && exec \"$0\" \"$@\""]
}

@Suite("start-up checks and options", .serialized, .timeLimit(.minutes(1)), .onOwnThread)
struct StartupTests {
    /// Two workers (one where only one CPU is allowed) and two backends.
    static var workers: Int { min(2, max(1, WorkerThread.allowedCPUs.count)) }

    @Test("too low an open-files limit is refused before anything opens: exit 71, the number needed and how to raise it; exactly that number starts", arguments: ioDrivers)
    func openFilesLimitChecked(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backends = try (0..<2).map { _ in try TestBackend() }
        let arguments = ["--bind", "127.0.0.1", "--port", "0", "--threads", "\(Self.workers)"] + backends.map(\.spec)
        // The budget as docs/operations.md states it, not as the code computes it: what is
        // open at start (the child has standard input, output and error, nothing else); per
        // worker a ring, a listening socket, 2 eventfds and a socket per backend; the health
        // monitor's eventfd (no check, so no check sockets); 8 spare.
        let needed = 3 + Self.workers * (1 + 1 + 2 + backends.count) + 1 + 8

        let refused = try DefaultSignalRelay(driver: driver, arguments, launcher: openFilesLimit(8))
        #expect(refused.waitForExit() == 71)
        #expect(refused.standardError.contains(
            "too few open files allowed: the relay needs \(needed) descriptors and RLIMIT_NOFILE is 8: 3 already open"),
            "stderr: \(refused.standardError)")
        #expect(refused.standardError.contains("`ulimit -n \(needed)`"))
        #expect(refused.standardError.contains("LimitNOFILE=\(needed)"))
        #expect(!refused.standardError.contains("Too many open files"), "the check comes before the first socket")

        let justBelow = try DefaultSignalRelay(driver: driver, arguments, launcher: openFilesLimit(needed - 1))
        #expect(justBelow.waitForExit() == 71)

        let enough = try DefaultSignalRelay(driver: driver, arguments, launcher: openFilesLimit(needed))
        let address = try enough.listenAddress()
        let lines = (0..<100).map { "limit.\($0):1|c" }
        try send(lines, to: address)
        let received = try collect(from: backends, expectedLines: lines.count, seconds: 5)
        enough.signal(SIGTERM)
        #expect(enough.waitForExit() == 0, "stderr: \(enough.standardError)")
        #expect(received.lines.flatMap { $0 }.sorted() == lines.sorted())

        // With the admin endpoint on, its event loop, listening socket, 64 connections and a
        // newcomer count too (70, as docs/operations.md states them): one fewer than that
        // fails, that many serves.
        let withAdmin = ["--admin", "127.0.0.1:0"] + arguments
        let adminNeeded = needed + 70
        let adminShort = try DefaultSignalRelay(driver: driver, withAdmin, launcher: openFilesLimit(adminNeeded - 1))
        #expect(adminShort.waitForExit() == 71, "stderr: \(adminShort.standardError)")
        #expect(adminShort.standardError.contains("70 for the admin endpoint"), "stderr: \(adminShort.standardError)")
        // Under a limit this high a descriptor the test process leaves inheritable (the test
        // runner's) may be below it, and counts: the relay's "already open" says how many.
        let open = try #require(adminShort.standardError.firstMatch(of: /: (\d+) already open/).flatMap { Int($0.1) })
        let reported = try #require(adminShort.standardError.firstMatch(of: /the relay needs (\d+) descriptors/).flatMap { Int($0.1) })
        #expect(reported == adminNeeded + open - 3, "stderr: \(adminShort.standardError)")
        let adminEnough = try DefaultSignalRelay(driver: driver, withAdmin, launcher: openFilesLimit(reported))
        let adminAddress = try adminEnough.listenAddress()
        try send(lines, to: adminAddress)
        let again = try collect(from: backends, expectedLines: lines.count, seconds: 5)
        adminEnough.signal(SIGTERM)
        #expect(adminEnough.waitForExit() == 0, "stderr: \(adminEnough.standardError)")
        #expect(again.lines.flatMap { $0 }.sorted() == lines.sorted())
    }

    @Test("--min-wait 0 is accepted, turns the minimum wait off, and the relay relays", arguments: ioDrivers)
    func minimumWaitOff(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let relay = try RelayProcess(driver: driver, [
            "--bind", "127.0.0.1", "--port", "0", "--threads", "1", "--min-wait", "0", backend.spec,
        ])
        let address = try relay.listenAddress()
        #expect(relay.standardError.contains("min_wait=off"))
        let lines = (0..<100).map { "nowait.\($0):1|c" }
        try send(lines, to: address)
        let received = try collect(from: [backend], expectedLines: lines.count, seconds: 5)
        relay.signal(SIGTERM)
        #expect(relay.waitForExit() == 0)
        #expect(received.lines[0].sorted() == lines.sorted())
    }

    @Test("--threads above the CPUs this process may use is refused with exit 64, naming the count allowed")
    func tooManyThreads() throws {
        let allowed = WorkerThread.allowedCPUs
        // Bound to loopback on a free port, so a relay that wrongly started is only killed.
        let relay = try DefaultSignalRelay(driver: .auto, ["--bind", "127.0.0.1", "--port", "0", "--threads", "\(allowed.count + 1)", "127.0.0.1:9"])
        #expect(relay.waitForExit(seconds: 5) == 64)
        let plural = allowed.count == 1 ? "" : "s"
        #expect(relay.standardError.contains(
            "invalid --threads '\(allowed.count + 1)': this process may use \(allowed.count) CPU\(plural) "
                + "(\(allowed.map(String.init).joined(separator: ","))): give at most \(allowed.count), "
                + "or name the CPUs to pin workers to with --cpus"), "stderr: \(relay.standardError)")
    }

    @Test("--threads above the allowed CPUs runs when --cpus names the CPUs: the operator's explicit choice", arguments: ioDrivers)
    func threadsWithExplicitCPUs(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let count = WorkerThread.allowedCPUs.count + 1
        let backend = try TestBackend()
        let relay = try RelayProcess(driver: driver, [
            "--bind", "127.0.0.1", "--port", "0", "--threads", "\(count)", "--cpus", "0-\(count - 1)", backend.spec,
        ])
        let address = try relay.listenAddress()
        #expect(relay.standardError.contains("threads=\(count)"))
        try send(["explicit:1|c"], to: address)
        let received = try collect(from: [backend], expectedLines: 1, seconds: 5)
        relay.signal(SIGTERM)
        #expect(relay.waitForExit() == 0)
        #expect(received.lines[0] == ["explicit:1|c"])
    }

    @Test("a backend listed twice (same host and port, any instance label or transport) exits 64 naming the duplicate as written", arguments: [
        (["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9001"], "invalid backend '127.0.0.1:9001': same host and port as backend 1 ('127.0.0.1:9001')"),
        (["127.0.0.1:9001:a", "127.0.0.1:9001:b"], "invalid backend '127.0.0.1:9001:b': same host and port as backend 1 ('127.0.0.1:9001:a')"),
        (["udp://127.0.0.1:9001", "tcp://127.0.0.1:9001"], "invalid backend 'tcp://127.0.0.1:9001': same host and port as backend 1 ('udp://127.0.0.1:9001')"),
    ])
    func duplicateBackend(_ backends: [String], _ message: String) throws {
        let relay = try DefaultSignalRelay(driver: .auto, ["--bind", "127.0.0.1", "--port", "0", "--threads", "1"] + backends)
        #expect(relay.waitForExit(seconds: 5) == 64)
        #expect(relay.standardError.contains(message), "stderr: \(relay.standardError)")
    }
}

@Suite("line endings and the hash tool", .serialized, .timeLimit(.minutes(1)), .onOwnThread)
struct LineEndingAndHashTests {
    @Test("only \\n ends a line: `a:1|c\\rb:2|c` reaches its backend as one line, \\r and all; \\r\\n and a last \\r end lines unforwarded", arguments: ioDrivers)
    func loneCarriageReturn(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backends = try (0..<2).map { _ in try TestBackend() }
        let relay = try InProcessRelay(backends: backends, driver: driver)
        try send(["cr.a:1|c\rcr.b:2|c", "cr.c:3|c\r\ncr.d:4|g\r"], to: relay.address)
        let expected = ["cr.a:1|c\rcr.b:2|c", "cr.c:3|c", "cr.d:4|g"]
        let received = try collect(from: backends, expectedLines: expected.count, seconds: 5)
        let counters = relay.stop()
        #expect(received.lines.flatMap { $0 }.sorted() == expected.sorted())
        for line in expected {
            #expect(received.lines[expectedBackend(of: line, backends: 2)].contains(line))
        }
        #expect(counters[.linesForwarded] == 3)
    }

    @Test("statsrelay hash takes 20 000 names on standard input and prints one routed line for each, in order")
    func manyNames() throws {
        let names = (0..<20_000).map { "service.\($0 % 97).requests.\($0)" }
        let input = FileManager.default.temporaryDirectory.appendingPathComponent("statsrelay-hash-\(getpid()).txt")
        try names.joined(separator: "\n").appending("\n").write(to: input, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: input) }
        let backends = ["10.0.0.1:8125", "10.0.0.2:8125", "10.0.0.3:8125"]
        let process = Process()
        process.executableURL = statsrelayExecutable
        process.arguments = ["hash", "--backends", backends.joined(separator: ","), "-"]
        process.standardInput = try FileHandle(forReadingFrom: input)
        let output = Pipe()
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        try process.run()
        let printed = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        #expect(process.terminationStatus == 0)
        let lines = printed.split(separator: "\n")
        #expect(lines.count == names.count)
        let mismatches = zip(names, lines).filter { name, line in
            line.split(separator: " ").prefix(2).joined(separator: " ")
                != "\(name) \(backends[ReferenceRouting.primary(name, backends: backends.count)])"
        }
        #expect(mismatches.isEmpty, "first mismatches: \(mismatches.prefix(3))")
    }
}
