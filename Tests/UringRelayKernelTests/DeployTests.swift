@testable import RelayKernel
import Foundation
import Glibc
import Testing
@testable import UringRelay

/// The systemd unit in `deploy/`, checked by systemd's own tools: `systemd-analyze verify`,
/// its exposure score, and its system call filter against every call the relay really makes.
@Suite("Deployment: the systemd unit", .onOwnThread)
struct DeployTests {
    /// `systemd-analyze verify` accepts the unit with no finding. Its exit status is 0 even for an
    /// unknown key or a value it cannot parse (it logs "…, ignoring."), so any line naming the unit
    /// counts as a finding too.
    @Test("systemd-analyze verify passes on deploy/statsrelay.service, with no warning")
    func unitVerifies() throws {
        let analyze = try DeployTools.require("systemd-analyze")
        let unit = try DeployTools.unitWithBuiltBinary()
        defer { try? FileManager.default.removeItem(at: unit.deletingLastPathComponent()) }

        let result = try DeployTools.run(analyze, ["verify", "--man=no", unit.path])

        #expect(result.status == 0, "systemd-analyze verify failed:\n\(result.output)")
        let findings = result.output.split(separator: "\n").filter { $0.contains("statsrelay.service") }
        #expect(findings.isEmpty, "systemd-analyze verify reported:\n\(findings.joined(separator: "\n"))")
    }

    /// The hardening keeps `systemd-analyze security`'s exposure at or below 2.5 of 10
    /// (1.6 when written, with systemd 252; an unhardened service scores 9.6).
    @Test("the unit's sandboxing keeps systemd's exposure score at most 2.5")
    func unitExposureIsLow() throws {
        let analyze = try DeployTools.require("systemd-analyze")
        let unit = try DeployTools.unitWithBuiltBinary()
        defer { try? FileManager.default.removeItem(at: unit.deletingLastPathComponent()) }

        // --threshold is in tenths; security exits non-zero when the exposure is above it.
        let result = try DeployTools.run(analyze, ["security", "--offline=yes", "--threshold=25", "--no-pager", unit.path])
        if result.output.contains("unrecognized option") {
            try Test.cancel(Comment(rawValue: "systemd-analyze security --offline needs systemd 250+: \(result.output)"))
        }

        #expect(result.status == 0, "exposure above 2.5:\n\(result.output)")
        #expect(result.output.contains("Overall exposure level for statsrelay.service"), "\(result.output)")
    }

    /// The Unix socket paths the documentation and the examples give (`--unix-socket`,
    /// `--control-socket`, a socket unit's `ListenDatagram=`) are in the unit's runtime directory,
    /// the one place under `/run` that `ProtectSystem=strict` leaves the relay writable, kept
    /// across a stop.
    @Test("every /run path the docs and examples give is in the unit's RuntimeDirectory, preserved across a stop")
    func documentedPathsAreWritable() throws {
        let unit = try String(contentsOf: DeployTools.unitFile, encoding: .utf8)
        let runtime = DeployTools.values(of: "RuntimeDirectory", in: unit)
        #expect(runtime == ["statsrelay"], "RuntimeDirectory=\(runtime)")
        #expect(DeployTools.values(of: "RuntimeDirectoryPreserve", in: unit) == ["yes"])
        let root = DeployTools.unitFile.deletingLastPathComponent().deletingLastPathComponent()
        var paths: [String] = []
        for file in ["docs/operations.md", "deploy/statsrelay.socket", "deploy/statsrelay.yaml", "README.md"] {
            let text = try String(contentsOf: root.appendingPathComponent(file), encoding: .utf8)
            // Every `/run/…` path, up to the first character that cannot be in one.
            var rest = text[...]
            while let range = rest.range(of: "/run/") {
                let path = rest[range.lowerBound...].prefix { !" `'\"),\n|:".contains($0) }
                paths.append(String(path))
                rest = rest[range.upperBound...]
            }
        }
        #expect(!paths.isEmpty, "the docs name no /run path")
        let directory = "/run/\(runtime.first ?? "")"
        let outside = paths.filter { $0 != directory && !$0.hasPrefix(directory + "/") }
        #expect(outside.isEmpty, "paths outside \(directory): \(Set(outside).sorted())")
    }

    /// Every system call the relay makes while starting, relaying, checking backends, taking
    /// SIGHUP and SIGUSR1 and stopping, on `driver`, is allowed by the unit's `SystemCallFilter=`
    /// (as systemd expands its groups), and every socket it opens is of a family the unit's
    /// `RestrictAddressFamilies=` allows. A call outside the filter would fail with EPERM under
    /// systemd (SystemCallErrorNumber=EPERM): for io_uring that means the portable driver,
    /// silently slower. What a ring does in the kernel is not a system call, so seccomp never
    /// sees it: the calls traced here are all it filters.
    @Test("every system call and socket family the relay uses is allowed by the unit", arguments: ioDrivers)
    func unitAllowsWhatTheRelayCalls(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let analyze = try DeployTools.require("systemd-analyze")
        let strace = try DeployTools.require("strace")
        let probe = try DeployTools.run(strace, ["-f", "-qq", "-o", "/dev/null", "/bin/true"])
        if probe.status != 0 { try Test.cancel(Comment(rawValue: "strace cannot trace here: \(probe.output)")) }

        let unitText = try String(contentsOf: DeployTools.unitFile, encoding: .utf8)
        let allowed = try DeployTools.allowedSystemCalls(unit: unitText, analyze: analyze)
        #expect(allowed.contains("io_uring_setup") && allowed.contains("sched_setaffinity"))
        let families = Set(DeployTools.values(of: "RestrictAddressFamilies", in: unitText))

        let directory = try DeployTools.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let trace = directory.appendingPathComponent("trace")
        // Its TCP port is held by a socket that does not listen: the checks are refused there,
        // never sent to a listener another test may open on that port.
        let (backends, twins) = try backendsWithHealthTwins(1)
        let backend = backends[0]
        twins[0].close()
        defer { withExtendedLifetime(twins) {} }
        let relay = try RelayProcess(
            // strace forks the relay: its own descriptors are not the relay's, so the test checks the
            // driver from the log (below) and the traced system calls.
            driver: driver, launcher: [strace, "-f", "-qq", "-o", trace.path], checksDriver: false,
            ["--bind", "127.0.0.1", "--port", "0", "--threads", "1", "--health-check", "tcp",
             "--health-interval", "100ms", "--health-timeout", "50ms", backend.spec])
        defer { if relay.process.isRunning { kill(relay.process.processIdentifier, SIGKILL) } }
        let address = try relay.listenAddress()
        #expect(relay.logLine(containing: "io_backend=")?.contains("io_backend=\(driver.rawValue)") == true,
                "\(relay.standardError)")

        let lines = (0..<200).map { "deploy.\($0):1|c" }
        try send(lines, to: address)
        #expect(try collect(from: [backend], expectedLines: lines.count).totalLines == lines.count)

        // strace is the child of this process; the relay is the child strace started: the first
        // line of the trace is its execve, prefixed with its pid.
        let firstLine = try #require(try String(contentsOf: trace, encoding: .utf8).split(separator: "\n").first)
        let relayPID = try #require(firstLine.split(separator: " ").first.flatMap { pid_t($0) })
        kill(relayPID, SIGHUP)
        #expect(relay.waitForLog("nothing to reload"))
        kill(relayPID, SIGUSR1)
        #expect(relay.waitForLog("statsrelay.lines_forwarded"))
        kill(relayPID, SIGTERM)
        #expect(relay.waitForExit(seconds: 20) == 0, "\(relay.standardError)")

        let calls = try DeployTools.tracedCalls(in: String(contentsOf: trace, encoding: .utf8))
        // The trace covers the relay's own work: its batched receives and sends.
        let relaying = driver == .uring ? "io_uring_enter" : "recvmmsg"
        #expect(calls.names.contains("execve") && calls.names.contains(relaying), "\(calls.names.sorted())")
        let refused = calls.names.subtracting(allowed).sorted()
        #expect(refused.isEmpty, "system calls outside the unit's SystemCallFilter: \(refused)")
        let foreign = calls.socketFamilies.subtracting(families).sorted()
        #expect(foreign.isEmpty, "socket families outside RestrictAddressFamilies: \(foreign)")
    }
}

/// Finding tools, running them, and reading the unit and a trace.
enum DeployTools {
    /// `deploy/statsrelay.service` in this checkout.
    static var unitFile: URL {
        URL(fileURLWithPath: #filePath)
            .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("deploy/statsrelay.service")
    }

    /// The full path of `tool` on `PATH` (or /usr/bin, /bin, /usr/sbin); cancels the test, as
    /// skipped with the reason, where it is not installed.
    static func require(_ tool: String) throws -> String {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? ""
        for directory in path.split(separator: ":").map(String.init) + ["/usr/bin", "/bin", "/usr/sbin"] {
            let candidate = directory + "/" + tool
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        try Test.cancel(Comment(rawValue: "\(tool) is not installed (Debian: apt-get install \(tool == "strace" ? "strace" : "systemd"))"))
    }

    /// A new empty directory under the temporary directory.
    static func temporaryDirectory() throws -> URL {
        let directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("statsrelay-deploy-\(getpid())-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        return directory
    }

    /// A copy of the unit, named `statsrelay.service`, in a new temporary directory, whose
    /// `ExecStart=` runs the `statsrelay` built beside the tests instead of /usr/bin/statsrelay
    /// (verify checks that the program exists). Everything else is the unit as shipped.
    static func unitWithBuiltBinary() throws -> URL {
        let text = try String(contentsOf: unitFile, encoding: .utf8)
        let execStart = text.split(separator: "\n").filter { $0.hasPrefix("ExecStart=/usr/bin/statsrelay ") }
        #expect(execStart.count == 1, "the unit should have one ExecStart=/usr/bin/statsrelay line")
        let rewritten = text.replacingOccurrences(
            of: "ExecStart=/usr/bin/statsrelay ", with: "ExecStart=\(statsrelayExecutable.path) ")
        let directory = try temporaryDirectory()
        let unit = directory.appendingPathComponent("statsrelay.service")
        try rewritten.write(to: unit, atomically: true, encoding: .utf8)
        return unit
    }

    /// Runs `executable` with `arguments` to its end; standard output and error together.
    static func run(_ executable: String, _ arguments: [String]) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    /// The whitespace-separated values of every `key=` line of `unit`, in order.
    static func values(of key: String, in unit: String) -> [String] {
        unit.split(separator: "\n")
            .filter { $0.hasPrefix(key + "=") }
            .flatMap { $0.dropFirst(key.count + 1).split(separator: " ").map(String.init) }
    }

    /// The system calls the unit's `SystemCallFilter=` lines allow: the first line is an allow
    /// list (the unit has no deny-first filter), later plain lines add to it, `~` lines take away.
    /// Groups are expanded by `systemd-analyze syscall-filter`, nested groups included.
    static func allowedSystemCalls(unit: String, analyze: String) throws -> Set<String> {
        var allowed = Set<String>()
        for line in unit.split(separator: "\n") where line.hasPrefix("SystemCallFilter=") {
            var entries = String(line.dropFirst("SystemCallFilter=".count))
            let deny = entries.hasPrefix("~")
            if deny { entries.removeFirst() }
            var calls = Set<String>()
            for entry in entries.split(separator: " ").map(String.init) {
                calls.formUnion(try expand(entry, analyze: analyze))
            }
            if deny { allowed.subtract(calls) } else { allowed.formUnion(calls) }
        }
        return allowed
    }

    /// The system calls `entry` names: itself, or a group's members, recursively.
    static func expand(_ entry: String, analyze: String) throws -> Set<String> {
        guard entry.hasPrefix("@") else { return [entry] }
        let result = try run(analyze, ["syscall-filter", "--no-pager", entry])
        #expect(result.status == 0, "systemd-analyze syscall-filter \(entry): \(result.output)")
        var calls = Set<String>()
        // The first line is the group's own name; then a comment, then members, one per line.
        for line in result.output.split(separator: "\n").dropFirst() {
            let member = line.trimmingCharacters(in: .whitespaces)
            if member.isEmpty || member.hasPrefix("#") { continue }
            calls.formUnion(member.hasPrefix("@") ? try expand(member, analyze: analyze) : [member])
        }
        #expect(!calls.isEmpty, "systemd-analyze syscall-filter \(entry) listed nothing")
        return calls
    }

    /// The system call names in an `strace -f` trace, and the families of the sockets it opened.
    ///
    /// Lines look like `PID name(arguments) = result`, `PID name(arguments <unfinished ...>`,
    /// `PID <... name resumed>…`, `PID --- SIGHUP {…} ---` or `PID +++ exited with 0 +++`.
    static func tracedCalls(in trace: String) throws -> (names: Set<String>, socketFamilies: Set<String>) {
        var names = Set<String>()
        var families = Set<String>()
        for line in trace.split(separator: "\n") {
            guard let space = line.firstIndex(of: " ") else { continue }
            let call = line[line.index(after: space)...].drop { $0 == " " }
            guard let open = call.firstIndex(of: "(") else { continue }
            let name = call[..<open]
            guard !name.isEmpty, name.allSatisfy({ $0.isLowercase || $0.isNumber || $0 == "_" }) else { continue }
            names.insert(String(name))
            if name == "socket" {
                families.insert(String(call[call.index(after: open)...].prefix { $0 != "," && $0 != ")" }))
            }
        }
        return (names, families)
    }
}
