@testable import RelayKernel
import Foundation
import Glibc
import Testing
@testable import UringRelay

/// `statsrelay` started with some of descriptors 0–2 closed: it must hold `/dev/null` there
/// before it opens anything, or its eventfds, ring or sockets take those numbers and the log
/// and exit report go to them (to a backend, if its socket becomes descriptor 2).
@Suite("statsrelay started with stdin, stdout or stderr closed", .timeLimit(.minutes(1)), .onOwnThread)
struct StandardDescriptorTests {
    /// A `/bin/sh` launcher that closes `descriptors` and executes the relay in its place.
    static func closing(_ descriptors: [Int]) -> [String] {
        let redirections = descriptors.map { "\($0)>&-" }.joined(separator: " ")
        return ["/bin/sh", "-c", "exec \"$0\" \"$@\" \(redirections)"]
    }

    /// Where each of the relay's descriptors 0–2 leads (`/proc/PID/fd`).
    static func standardTargets(of pid: Int32) -> [String] {
        (0...2).map { (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/fd/\($0)")) ?? "closed" }
    }

    /// Sends a probe line now and then until one reaches `backend` (the relay is up), at most
    /// five seconds; returns the lines the backend got.
    static func waitUntilRelaying(to backend: TestBackend, via address: SocketAddress) throws -> [String] {
        for attempt in 0..<50 {
            try send(["probe.\(attempt):1|c"], to: address)
            let got = try collect(from: [backend], expectedLines: 1, seconds: 0.1, settleMilliseconds: 0).lines[0]
            if !got.isEmpty { return got }
        }
        return []
    }

    @Test("with 0, 1 and 2 all closed it relays, holds /dev/null on all three, and nothing else reaches the backend", arguments: ioDrivers)
    func allClosed(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let port = try unusedPort()
        let relay = try RelayProcess(
            // No standard error: the test checks the driver by its io_uring descriptors.
            driver: driver, launcher: Self.closing([0, 1, 2]), checksDriver: false,
            ["--bind", "127.0.0.1", "--port", "\(port)", "--threads", "1", "--flush-interval", "1ms", backend.spec])
        let address = SocketAddress(numericHost: "127.0.0.1", port: port)!
        var got = try Self.waitUntilRelaying(to: backend, via: address)
        #expect(!got.isEmpty, "the relay did not relay")
        #expect(Self.standardTargets(of: relay.process.processIdentifier) == ["/dev/null", "/dev/null", "/dev/null"])
        // No log to say which driver runs: an io_uring instance among its descriptors does.
        let descriptors = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(relay.process.processIdentifier)/fd")) ?? []
        let rings = descriptors.filter {
            (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(relay.process.processIdentifier)/fd/\($0)")) == "anon_inode:[io_uring]"
        }
        #expect(rings.isEmpty == (driver == .portable), "io_uring descriptors: \(rings.count)")
        // Stopping writes the exit report: to /dev/null, never to a socket.
        relay.signal(SIGTERM)
        #expect(relay.waitForExit() == 0)
        got += try collect(from: [backend], expectedLines: 0, seconds: 0.3).lines[0]
        #expect(got.allSatisfy { $0.hasPrefix("probe.") }, "\(got)")
        #expect(relay.standardError.isEmpty)
    }

    @Test("with 0 and 1 closed, stderr still carries the log and the exit report, and says what was reopened", arguments: ioDrivers)
    func inputAndOutputClosed(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let relay = try RelayProcess(
            driver: driver, launcher: Self.closing([0, 1]), ["--bind", "127.0.0.1", "--port", "0", "--threads", "1", backend.spec])
        let address = try relay.listenAddress()
        #expect(relay.standardError.contains("io_backend=\(driver.rawValue)"))
        #expect(relay.logLine(containing: "descriptors closed at start now hold /dev/null")?.contains("descriptors=0,1") == true,
                "\(relay.standardError)")
        let targets = Self.standardTargets(of: relay.process.processIdentifier)
        #expect(Array(targets.prefix(2)) == ["/dev/null", "/dev/null"])
        #expect(targets[2].hasPrefix("pipe:"), "stderr is the test's pipe, not a socket: \(targets[2])")
        #expect(!(try Self.waitUntilRelaying(to: backend, via: address)).isEmpty)
        relay.signal(SIGTERM)
        #expect(relay.waitForExit() == 0)
        #expect(relay.counter("statsrelay.lines_received").map { $0 >= 1 } == true, "no exit report on stderr")
    }
}
