@testable import RelayKernel
import Foundation
import Glibc
import Testing
@testable import UringRelay

/// The start-up warnings docs/operations.md promises, each on a real child relay that then
/// relays: a receive buffer smaller than asked for, and a worker that cannot be pinned.
@Suite("Start-up warnings: a small receive buffer, a worker left unpinned", .serialized, .timeLimit(.minutes(1)), .onOwnThread)
struct StartupWarningTests {
    static let smallBufferWarning = "receive buffer smaller than requested"

    /// `net.core.rmem_max`, the most an unprivileged socket may ask for.
    static func receiveBufferMaximum() throws -> Int {
        let text = try String(contentsOfFile: "/proc/sys/net/core/rmem_max", encoding: .utf8)
        return try #require(Int(text.trimmingCharacters(in: .whitespacesAndNewlines)))
    }

    /// The value of `key=` in a log line (up to the next space).
    static func value(of key: String, in line: String) -> Int? {
        guard let range = line.range(of: "\(key)=") else { return nil }
        return Int(line[range.upperBound...].prefix { $0.isNumber })
    }

    @Test("without CAP_NET_ADMIN, a --rcvbuf above net.core.rmem_max is cut, and the start-up log warns with what was asked and obtained; the relay relays", arguments: ioDrivers)
    func smallReceiveBufferWarned(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let python = try RelayLauncher.requirePython()
        let maximum = try Self.receiveBufferMaximum()
        // The kernel grants at most rmem_max and reports twice what it granted: ask for more
        // than either.
        let requested = 4 * maximum
        guard requested <= Int(Int32.max) else { try Test.cancel("net.core.rmem_max is \(maximum): no --rcvbuf can exceed it") }
        let backend = try TestBackend()
        let relay = try RelayProcess(
            driver: driver, launcher: RelayLauncher.withoutNetAdmin.command(python: python),
            ["--bind", "127.0.0.1", "--port", "0", "--threads", "1", "--rcvbuf", "\(requested)", backend.spec])
        _ = relay.waitForLog("listening on ")
        if !relay.process.isRunning, relay.waitForExit() == 3, relay.standardError.contains("launcher: ") {
            try Test.cancel(Comment(rawValue: "cannot restrict the child: \(relay.standardError)"))
        }
        let address = try relay.listenAddress()
        #expect(relay.waitForLog(Self.smallBufferWarning, seconds: 5), "\(relay.standardError)")
        let warnings = relay.standardError.split(separator: "\n").filter { $0.contains(Self.smallBufferWarning) }.map(String.init)
        #expect(warnings.count == 1, "\(relay.standardError)")
        let warning = warnings.first ?? ""
        #expect(warning.contains(" warning "), "logged at warning: \(warning)")
        #expect(warning.contains("net.core.rmem_max") && warning.contains("CAP_NET_ADMIN"), "names the fixes: \(warning)")
        #expect(Self.value(of: "requested", in: warning) == requested, "\(warning)")
        let obtained = try #require(Self.value(of: "obtained", in: warning), "\(warning)")
        #expect(obtained < requested && obtained <= 2 * maximum, "\(warning)")
        let lines = (0..<100).map { "small.rcvbuf.\($0):1|c" }
        try send(lines, to: address)
        let received = try collect(from: [backend], expectedLines: lines.count, seconds: 5)
        relay.signal(SIGTERM)
        #expect(relay.waitForExit() == 0)
        #expect(received.lines[0].sorted() == lines.sorted())
    }

    @Test("with CAP_NET_ADMIN (root) the same --rcvbuf is granted whole and nothing is warned", arguments: ioDrivers)
    func forcedReceiveBufferNotWarned(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        guard geteuid() == 0 else { try Test.cancel("not root: SO_RCVBUFFORCE is not allowed here") }
        let requested = 4 * (try Self.receiveBufferMaximum())
        guard requested <= Int(Int32.max) else { try Test.cancel("net.core.rmem_max is too large to exceed") }
        let backend = try TestBackend()
        let relay = try RelayProcess(driver: driver, ["--bind", "127.0.0.1", "--port", "0", "--threads", "1", "--rcvbuf", "\(requested)", backend.spec])
        _ = try relay.listenAddress()
        let startup = relay.logLine(containing: "listening on ") ?? ""
        #expect((Self.value(of: "rcvbuf_obtained", in: startup) ?? 0) >= requested, "\(startup)")
        // The main thread logs the start-up (and any warning) before it answers SIGUSR1.
        #expect(relay.liveReport() != nil)
        #expect(!relay.standardError.contains(Self.smallBufferWarning), "\(relay.standardError)")
        relay.signal(SIGTERM)
        #expect(relay.waitForExit() == 0)
    }

    /// The start-up line's `min_wait` value (`off`, `unsupported`, `250us` or `250us-2000us`).
    static func minimumWait(in line: String) -> String? {
        line.split(separator: " ").first { $0.hasPrefix("min_wait=") }.map { String($0.dropFirst("min_wait=".count)) }
    }

    @Test(
        "the minimum wait adapts only as far as the socket buffer holds: --rcvbuf 128K waits --min-wait alone; a buffer of 2 MiB or more adapts up to 2 ms; the start-up log says which (io_uring; the portable driver has no minimum wait)",
        arguments: ioDrivers)
    func minimumWaitBoundedByBuffer(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        for rcvbuf in ["128K", "8M"] {
            let relay = try RelayProcess(driver: driver, ["--bind", "127.0.0.1", "--port", "0", "--threads", "1", "--rcvbuf", rcvbuf, backend.spec])
            let address = try relay.listenAddress()
            let startup = relay.logLine(containing: "listening on ") ?? ""
            let obtained = try #require(Self.value(of: "rcvbuf_obtained", in: startup), "\(startup)")
            let expected: String
            if driver == .portable {
                expected = "unsupported"
            } else if rcvbuf == "128K" {
                // At most 128 KiB whatever the privileges: 125 µs at 1 M datagrams/s, under --min-wait.
                #expect(obtained <= 128 << 10, "\(startup)")
                expected = "250us"
            } else if obtained >= 2 << 20 {
                expected = "250us-2000us"
            } else {
                // Cut by net.core.rmem_max without CAP_NET_ADMIN: between the two.
                let ceiling = min(2_000, obtained / 1_024)
                expected = ceiling > 250 ? "250us-\(ceiling)us" : "250us"
            }
            #expect(Self.minimumWait(in: startup) == expected, "--rcvbuf \(rcvbuf): \(startup)")
            let lines = (0..<50).map { "wait.range.\(rcvbuf).\($0):1|c" }
            try send(lines, to: address)
            let received = try collect(from: [backend], expectedLines: lines.count, seconds: 5)
            relay.signal(SIGTERM)
            #expect(relay.waitForExit() == 0)
            #expect(received.lines[0].sorted() == lines.sorted())
        }
    }

    /// The CPU list (`Cpus_allowed_list`) of the relay's thread named `name`.
    static func affinity(of pid: Int32, thread name: String) throws -> String? {
        let tasks = "/proc/\(pid)/task"
        for task in try FileManager.default.contentsOfDirectory(atPath: tasks) {
            let comm = try String(contentsOfFile: "\(tasks)/\(task)/comm", encoding: .utf8)
            guard comm.trimmingCharacters(in: .whitespacesAndNewlines) == name else { continue }
            let status = try String(contentsOfFile: "\(tasks)/\(task)/status", encoding: .utf8)
            return status.split(separator: "\n").first { $0.hasPrefix("Cpus_allowed_list:") }
                .map { String($0.split(separator: "\t").last ?? "") }
        }
        return nil
    }

    @Test("--cpus naming a CPU this process may not use: that worker logs a warning and runs unpinned, the other is pinned, both relay", arguments: ioDrivers)
    func unpinnedWorkerWarned(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let allowed = WorkerThread.allowedCPUs
        let pinned = try #require(allowed.first)
        let outside = try #require(allowed.last) + 1
        try #require(outside < WorkerThread.pinnableCPUs)
        let backends = try (0..<2).map { _ in try TestBackend() }
        let relay = try RelayProcess(driver: driver, [
            "--bind", "127.0.0.1", "--port", "0", "--threads", "2", "--cpus", "\(pinned),\(outside)", "--rcvbuf", "16M",
        ] + backends.map(\.spec))
        let address = try relay.listenAddress()
        let warnings = relay.standardError.split(separator: "\n").filter { $0.contains("worker could not be pinned") }.map(String.init)
        #expect(warnings.count == 1, "\(relay.standardError)")
        let warning = warnings.first ?? ""
        #expect(warning.contains(" warning "), "logged at warning: \(warning)")
        #expect(warning.contains("worker=1") && warning.contains("cpu=\(outside)") && warning.contains("errno"), "\(warning)")
        let pid = relay.process.processIdentifier
        #expect(try Self.affinity(of: pid, thread: "statsrelay-w0") == "\(pinned)")
        // Unpinned: the affinity it was started with, every CPU the process may use.
        let processCPUs = try #require(try Self.affinity(of: pid, thread: "statsrelay"))
        #expect(try Self.affinity(of: pid, thread: "statsrelay-w1") == processCPUs)
        // Both workers relay: spread flows over their two sockets while the relay is stopped.
        try #require(relay.suspend(), "the relay did not stop")
        let (flows, queues) = try spreadOverWorkers(address) { flow in (0..<20).map { "unpinned.\(flow).\($0):1|c" } }
        #expect(queues.count == 2 && queues.allSatisfy { $0 > 0 }, "queued bytes per worker socket: \(queues)")
        relay.signal(SIGCONT)
        let lines = flows.flatMap { $0 }
        let received = try collect(from: backends, expectedLines: lines.count)
        relay.signal(SIGTERM)
        #expect(relay.waitForExit() == 0)
        #expect(received.lines.flatMap { $0 }.sorted() == lines.sorted())
    }
}
