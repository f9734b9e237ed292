@testable import RelayKernel
import Foundation
import Glibc
import Testing
@testable import UringRelay

/// A child relay started with less than root has: a locked-memory limit, a capability taken
/// away, or another user altogether.
///
/// A `python3` program applies each restriction to itself, then `execv`s `statsrelay`. A step
/// that fails exits with status 3 and a `launcher:` line, so a test can tell it from the relay.
struct Restriction: Sendable, CustomStringConvertible {
    /// `RLIMIT_MEMLOCK`, soft and hard, in bytes.
    var lockedBytes: Int?
    /// A capability dropped from the bounding set (so root, too, goes without it after `execv`).
    var droppedCapability: (number: Int, name: String)?
    /// A user id (and group id) of its own: a user's locked memory is summed over that user's
    /// processes, so a fresh user is charged for this relay alone, whatever else runs as root.
    var user: Int?

    var description: String {
        var parts: [String] = []
        if let lockedBytes { parts.append("RLIMIT_MEMLOCK \(lockedBytes >> 10)K") }
        if let droppedCapability { parts.append("without \(droppedCapability.name)") }
        if let user { parts.append("uid \(user)") }
        return parts.joined(separator: ", ")
    }

    /// A user id no process on this host is likely to have.
    static func freshUser() -> Int { Int.random(in: 200_000..<900_000) }

    /// `python3 -c PROGRAM SETTINGS`; the executable and its arguments follow.
    func command(python: URL) -> [String] {
        let program = """
            import ctypes, os, resource, sys
            libc = ctypes.CDLL(None, use_errno=True)
            def fail(step, reason=None):
                sys.stderr.write("launcher: %s: %s\\n" % (step, reason or os.strerror(ctypes.get_errno())))
                sys.exit(3)
            for setting in filter(None, sys.argv[1].split(",")):
                key, _, value = setting.partition("=")
                if key == "memlock":
                    try: resource.setrlimit(resource.RLIMIT_MEMLOCK, (int(value), int(value)))
                    except OSError as error: fail("setrlimit RLIMIT_MEMLOCK", error)
                elif key == "dropcap":
                    if libc.prctl(24, int(value), 0, 0, 0) != 0: fail("prctl PR_CAPBSET_DROP " + value)
                elif key == "uid":
                    try:
                        os.setgroups([])
                        os.setresgid(int(value), int(value), int(value))
                        os.setresuid(int(value), int(value), int(value))
                    except OSError as error: fail("setresuid " + value, error)
            os.execv(sys.argv[2], sys.argv[2:])
            """
        var settings: [String] = []
        if let lockedBytes { settings.append("memlock=\(lockedBytes)") }
        if let droppedCapability { settings.append("dropcap=\(droppedCapability.number)") }
        if let user { settings.append("uid=\(user)") }
        return [python.path, "-c", program, settings.joined(separator: ",")]
    }

    /// Starts `statsrelay arguments` under this restriction and waits until it listens or
    /// exits; cancels the test when the launcher could not apply the restriction.
    func launch(driver: IOBackendChoice, _ arguments: [String]) throws -> RelayProcess {
        let python = try RelayLauncher.requirePython()
        // Run as another user, the relay must be reachable by one.
        let executable = user == nil ? statsrelayExecutable : try statsrelayExecutableForOtherUsers.get()
        let child = try RelayProcess(driver: driver, launcher: command(python: python), executable: executable, arguments)
        _ = child.waitForLog("listening on ")
        if !child.process.isRunning, child.waitForExit() == 3, child.standardError.contains("launcher: ") {
            try Test.cancel(Comment(rawValue: "cannot restrict the child (\(self)): \(child.standardError)"))
        }
        return child
    }
}

/// A configuration whose locked memory was worked out by hand from how Linux 6.x sizes a ring
/// (queue sizes rounded up to powers of two; the SQE array, the rings and the buffer ring each
/// rounded up to 4 KiB pages).
struct LockedMemoryCase: Sendable, CustomTestStringConvertible {
    var threads: Int
    var arguments: [String]
    var backends: Int
    /// One worker's ring and buffer ring (the probe's are the same size).
    var ringKiB: Int
    /// What the advice must name: every worker's, and the probe's still being freed.
    var neededKiB: Int { (threads + 1) * ringKiB }
    var testDescription: String { "\(threads) worker(s) \(arguments.joined(separator: " ")) \(backends) backend(s): \(neededKiB) KiB" }

    static let table: [LockedMemoryCase] = [
        // SQEs 1024 × 64 = 64 KiB; CQ 256 + 1024 + 64 → 2048 × 16 + 64 + SQ array 4 KiB → 40 KiB;
        // buffer ring 256 × 16 → 4 KiB.
        LockedMemoryCase(threads: 1, arguments: [], backends: 1, ringKiB: 108),
        LockedMemoryCase(threads: 2, arguments: [], backends: 1, ringKiB: 108),
        // CQ 4096 + 1024 + 64 → 8192 entries: 136 KiB; buffer ring 4096 × 16 = 64 KiB.
        LockedMemoryCase(threads: 1, arguments: ["--receive-buffers", "4096"], backends: 1, ringKiB: 64 + 136 + 64),
        // 300 backends: 4 × (3 × 6 + 600 + 2) = 2480 send slots, CQ → 4096 entries: 72 KiB.
        LockedMemoryCase(threads: 1, arguments: [], backends: 300, ringKiB: 64 + 72 + 4),
    ]
}

@Suite("Start-up resources: the locked memory the advice names, the receive buffer the log reports", .serialized, .timeLimit(.minutes(2)), .onOwnThread)
struct StartupResourceTests {
    /// The configuration a child of `memory` is started with, as a `RelayConfiguration` too.
    func configuration(_ memory: LockedMemoryCase, backends specs: [String]) throws -> RelayConfiguration {
        var configuration = RelayConfiguration(backends: try specs.map { try BackendAddress(parsing: $0) })
        configuration.threads = memory.threads
        if let index = memory.arguments.firstIndex(of: "--receive-buffers") {
            configuration.receiveBuffers = Int(memory.arguments[index + 1])!
        }
        return configuration
    }

    /// The probe's ring is released by the kernel in the background once closed, usually (not
    /// always) after the workers have taken their own: the need is exact only up to it. So
    /// the relay must start under the need the advice names, and fail (naming it) one page
    /// below what its workers alone take, whatever the probe's ring is doing by then.
    @Test("the locked memory the advice names is enough for io_uring, and a page less than the workers take fails naming it",
          arguments: LockedMemoryCase.table)
    func lockedMemoryNeeded(memory: LockedMemoryCase) throws {
        try requireDriver(.uring)
        let backend = try TestBackend()
        let others = (1..<memory.backends).map { "127.0.0.1:\(20_000 + $0)" }
        let specs = [backend.spec] + others
        #expect(StartupDiagnosis.lockedBytesNeeded(try configuration(memory, backends: specs)) == memory.neededKiB << 10)
        let arguments = ["--bind", "127.0.0.1", "--port", "0", "--threads", "\(memory.threads)"]
            + memory.arguments + specs

        let enough = try Restriction(lockedBytes: memory.neededKiB << 10, user: Restriction.freshUser()).launch(driver: .uring, arguments)
        let line = enough.logLine(containing: "io_backend=") ?? "no io_backend line in: \(enough.standardError)"
        #expect(line.contains("io_backend=uring") && !line.contains("reason="), "\(line)")
        #expect(enough.standardError.contains("listening on "), "relay did not start: \(enough.standardError)")
        enough.signal(SIGTERM)
        #expect(enough.waitForExit() == 0, "\(enough.standardError)")

        let shortKiB = memory.threads * memory.ringKiB - 4
        let short = try Restriction(lockedBytes: shortKiB << 10, user: Restriction.freshUser()).launch(driver: .uring, arguments)
        let status = short.waitForExit()
        #expect(status == 69, "exit status \(status.map(String.init) ?? "none") one page short: \(short.standardError)")
        let workers = memory.threads == 1 ? "1 worker needs" : "\(memory.threads) workers need"
        #expect(short.standardError.contains("Cannot allocate memory (errno 12)"), "\(short.standardError)")
        #expect(short.standardError.contains("is \(shortKiB) KiB and \(workers) \(memory.neededKiB) KiB"), "\(short.standardError)")
    }

    /// `net.core.rmem_max`: the most an unprivileged `SO_RCVBUF` request is granted.
    static func receiveBufferMaximum() throws -> Int {
        let text = try String(contentsOfFile: "/proc/sys/net/core/rmem_max", encoding: .utf8)
        return try #require(Int(text.trimmingCharacters(in: .whitespacesAndNewlines)))
    }

    /// Whether capability `number` is in this process's effective set (`CapEff` in
    /// /proc/self/status), which the child relay inherits.
    static func hasEffectiveCapability(_ number: Int) -> Bool {
        guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("CapEff:") }),
              let mask = UInt64(line.dropFirst("CapEff:".count).trimmingCharacters(in: .whitespaces), radix: 16) else { return false }
        return mask & (1 << UInt64(number)) != 0
    }

    /// `rcvbuf_obtained` from the start-up line.
    static func obtained(_ child: RelayProcess) -> Int? {
        guard let line = child.logLine(containing: "rcvbuf_obtained="),
              let range = line.range(of: "rcvbuf_obtained=") else { return nil }
        return Int(line[range.upperBound...].prefix { $0.isNumber })
    }

    @Test("without CAP_NET_ADMIN, twice net.core.rmem_max asked: rcvbuf_obtained is rmem_max, with the warning", arguments: ioDrivers)
    func unprivilegedReceiveBuffer(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let maximum = try Self.receiveBufferMaximum()
        let backend = try TestBackend()
        let child = try Restriction(droppedCapability: (12, "CAP_NET_ADMIN")).launch(driver: driver, [
            "--bind", "127.0.0.1", "--port", "0", "--threads", "1",
            "--rcvbuf", "\(2 * maximum)", backend.spec,
        ])
        #expect(child.standardError.contains("io_backend=\(driver.rawValue)"), "\(child.standardError)")
        #expect(Self.obtained(child) == maximum, "\(child.standardError)")
        let warning = child.logLine(containing: "receive buffer smaller than requested") ?? "no warning in: \(child.standardError)"
        #expect(warning.contains("obtained=\(maximum)") && warning.contains("requested=\(2 * maximum)"), "\(warning)")
        child.signal(SIGTERM)
        #expect(child.waitForExit() == 0, "\(child.standardError)")
    }

    @Test("with CAP_NET_ADMIN (SO_RCVBUFFORCE), twice net.core.rmem_max asked: rcvbuf_obtained is the request, no warning", arguments: ioDrivers)
    func privilegedReceiveBuffer(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let maximum = try Self.receiveBufferMaximum()
        let backend = try TestBackend()
        if !Self.hasEffectiveCapability(12) { try Test.cancel("this process has no CAP_NET_ADMIN: SO_RCVBUFFORCE is refused") }
        let child = try RelayProcess(driver: driver, [
            "--bind", "127.0.0.1", "--port", "0", "--threads", "1", "--rcvbuf", "\(2 * maximum)", backend.spec,
        ])
        #expect(child.waitForLog("listening on "), "relay did not start: \(child.standardError)")
        #expect(Self.obtained(child) == 2 * maximum, "\(child.standardError)")
        #expect(!child.standardError.contains("receive buffer smaller than requested"), "\(child.standardError)")
        child.signal(SIGTERM)
        #expect(child.waitForExit() == 0, "\(child.standardError)")
    }
}
