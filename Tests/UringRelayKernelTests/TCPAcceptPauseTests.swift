@testable import RelayKernel
import Foundation
import Glibc
import Testing
@testable import UringRelay

/// The open descriptors of process `pid` (numbers, from `/proc`).
private func openDescriptors(pid: Int32) -> [Int] {
    ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")) ?? []).compactMap { Int($0) }
}

/// A relay out of descriptors while TCP clients wait to be accepted: `accept4` fails with
/// `EMFILE` and the listening socket stays readable, so a level-triggered wait would wake the
/// worker at once, turn after turn (before the fix: 100 % of a CPU on the portable driver,
/// 13 % on io_uring). The relay pauses accepting instead, and resumes as descriptors free up.
@Suite("TCP ingest out of descriptors: accepting pauses, never spins, and resumes", .serialized, .timeLimit(.minutes(1)), .onOwnThread)
struct TCPAcceptPauseTests {
    @Test("at RLIMIT_NOFILE, accept errors are counted at most once per 100 ms pause (no spinning), and every waiting client is accepted and relayed as connections close", arguments: ioDrivers)
    func pausesAtDescriptorLimit(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let tcpPort = try unusedTCPPort()
        // The limit is set before the relay starts: an io_uring accept takes the limit in force
        // when it was armed, so lowering it afterwards (prlimit --pid) would not reach it.
        let limit = 32
        let relay = try RelayProcess(
            driver: driver, launcher: ["/usr/bin/prlimit", "--nofile=\(limit):\(limit)"],
            ["--bind", "127.0.0.1", "--port", "0", "--tcp-port", "\(tcpPort)", "--threads", "1", "--admin", "none", backend.spec])
        _ = try relay.listenAddress()
        let pid = relay.process.processIdentifier
        let address = SocketAddress(numericHost: "127.0.0.1", port: tcpPort)!
        // A connection relayed and closed first: the worker has opened all it keeps open
        // before its descriptors are counted.
        let probe = try TCPIngestClient(to: address)
        try probe.write("probe:1|c\n")
        probe.finish()
        _ = try collect(from: [backend], expectedLines: 1)
        try #require(probe.waitForClose(seconds: 10))
        // Every descriptor below the limit that is not open is room for one connection.
        let open = openDescriptors(pid: pid)
        let room = limit - open.count
        try #require((1...limit).contains(room), "\(open.count) descriptors open under a limit of \(limit)")
        let started = Date()
        // The connections that take every descriptor left, held open: their lines arriving
        // says they were accepted.
        let holding = try (0..<room).map { index in
            let client = try TCPIngestClient(to: address)
            try client.write("holding.\(index):1|c\n")
            return client
        }
        let first = try collect(from: [backend], expectedLines: room, seconds: 20)
        #expect(first.lines[0].sorted() == (0..<room).map { "holding.\($0):1|c" }.sorted())
        // Clients the relay cannot accept now: each waits in the listen queue, its line sent
        // and its end written.
        let waitingCount = 5
        let waiting = try (0..<waitingCount).map { index in
            let client = try TCPIngestClient(to: address)
            try client.write("waiting.\(index):1|c\n")
            client.finish()
            return client
        }
        // A window with the relay at its limit and connections waiting: the time a spinning
        // worker would count thousands of failed accepts in.
        usleep(500_000)
        for client in holding { client.finish() }
        let received = try collect(from: [backend], expectedLines: waitingCount, seconds: 20)
        #expect(received.lines[0].sorted() == (0..<waitingCount).map { "waiting.\($0):1|c" }.sorted())
        withExtendedLifetime(waiting) {}
        let elapsed = Date().timeIntervalSince(started)
        relay.signal(SIGTERM)
        #expect(relay.waitForExit() == 0)
        #expect(relay.counter("statsrelay.tcp_connections_accepted") == UInt64(1 + room + waitingCount))
        let errors = try #require(relay.counter("statsrelay.tcp_accept_errors"))
        #expect(errors >= 1, "the descriptor limit was never met: room for \(room) connections under a limit of \(limit)")
        // One failed accept per pause of 100 ms at most (and one more as the last pause began);
        // a worker woken again at once by the waiting connection counts thousands.
        let bound = UInt64(elapsed / 0.1) + 2
        #expect(errors <= bound, "\(errors) accept errors in \(elapsed) s: accepting did not pause")
    }

    @Test("under a soft open-files limit too low for --tcp-max-connections the relay raises it to the hard limit, warns with the connections that fit, and relays over TCP", arguments: ioDrivers)
    func raisesOpenFilesForTCP(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let tcpPort = try unusedTCPPort()
        let relay = try RelayProcess(
            driver: driver, launcher: ["/usr/bin/prlimit", "--nofile=200:400"],
            ["--bind", "127.0.0.1", "--port", "0", "--tcp-port", "\(tcpPort)", "--tcp-max-connections", "1000", "--threads", "1", "--admin", "none", backend.spec])
        _ = try relay.listenAddress()
        let limits = try String(contentsOfFile: "/proc/\(relay.process.processIdentifier)/limits", encoding: .utf8)
        let openFiles = limits.split(separator: "\n").first { $0.hasPrefix("Max open files") }?.split(separator: " ", omittingEmptySubsequences: true)
        #expect(openFiles?.dropFirst(3).prefix(2).map(String.init) == ["400", "400"], "\(limits)")
        #expect(relay.waitForLog("raised the open-files limit for TCP ingest connections"), "\(relay.standardError)")
        #expect(relay.waitForLog("leaves room for about"), "\(relay.standardError)")
        #expect(relay.standardError.contains("--tcp-max-connections 1000"), "\(relay.standardError)")
        let client = try TCPIngestClient(to: SocketAddress(numericHost: "127.0.0.1", port: tcpPort)!)
        try client.write("raised.limit:1|c\n")
        let received = try collect(from: [backend], expectedLines: 1)
        #expect(received.lines[0] == ["raised.limit:1|c"])
        relay.signal(SIGTERM)
        #expect(relay.waitForExit() == 0)
    }
}
