import Foundation
import Glibc
@testable import RelayKernel
import Synchronization
import Testing
@testable import UringRelay

/// Lines `first..<first+count`, each with a name of its own (`tcp.<i>.<pad>:<i>|c`).
private func numberedLines(_ range: Range<Int>, pad: Int = 20) -> [String] {
    range.map { "tcp.\($0).\(String(repeating: "x", count: pad)):\($0)|c" }
}

/// Packs `lines` into datagrams of `perDatagram` lines each.
private func datagrams(of lines: [String], perDatagram: Int) -> [String] {
    stride(from: 0, to: lines.count, by: perDatagram).map { lines[$0..<min($0 + perDatagram, lines.count)].joined(separator: "\n") }
}

/// Every way the relay counts a received line as not delivered, summed (for reconciling).
private func droppedLines(_ counters: RelayCounters) -> UInt64 {
    RelayCounter.allCases.filter { $0.name.hasPrefix("statsrelay.lines_dropped.") }.reduce(0) { $0 + counters[$1] }
}

/// A relay started with `backends` written as given (TCP and UDP mixed).
private func startRelay(
    _ backends: [String], driver: IOBackendChoice, configure: (inout RelayConfiguration) -> Void = { _ in }
) throws -> InProcessRelay {
    try InProcessRelay(backends: [], driver: driver) { configuration in
        configuration.backends = backends.map { try! BackendAddress(parsing: $0) }
        configure(&configuration)
    }
}

@Suite("TCP backends: delivery, mixed pools, outages, slow readers, partial writes", .serialized, .onOwnThread)
struct TCPBackendTests {
    @Test("lines reach a tcp:// backend byte-exact, in order, each ended by a newline (a packet's lone line too)", arguments: ioDrivers)
    func deliveredByteExact(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TCPTestBackend()
        defer { backend.close() }
        // 64-byte packets: the 70-byte line goes alone, without a newline from the assembler.
        let relay = try startRelay([backend.spec], driver: driver) { $0.packetBytes = 64 }
        let long = "tcp.long." + String(repeating: "y", count: 57) + ":1|c"
        #expect(long.utf8.count == 70)
        let lines = numberedLines(0..<300, pad: 4) + [long] + numberedLines(300..<400, pad: 4)
        // One line per datagram keeps the order the relay sees equal to the order sent.
        try send(lines, to: relay.address)
        #expect(backend.wait { $0.lines.count >= lines.count }, "received \(backend.lines.count) of \(lines.count)")
        let counters = relay.stop()
        let stream = backend.streams.reduce([], +)
        #expect(String(decoding: stream, as: UTF8.self) == lines.map { $0 + "\n" }.joined(), "the stream is every line and its newline, nothing else")
        #expect(backend.accepted == 1, "one persistent connection")
        let identity = "127.0.0.1:\(backend.port)"
        #expect(counters[.linesSent, backend: identity] == UInt64(lines.count))
        #expect(counters[.bytesSent, backend: identity] == UInt64(stream.count))
        #expect(counters[.tcpConnects, backend: identity] == 1 && counters[.tcpConnectionFailures, backend: identity] == 0)
        #expect(counters[.linesReceived] == counters.total(.linesSent) + droppedLines(counters))
    }

    @Test("a mixed pool: UDP and TCP backends get exactly the lines jump hash gives them", arguments: ioDrivers)
    func mixedPool(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let tcp = try TCPTestBackend()
        defer { tcp.close() }
        let udp = try TestBackend.avoiding([tcp.port])
        let relay = try startRelay([udp.spec, tcp.spec], driver: driver)
        let lines = numberedLines(0..<2_000)
        try send(datagrams(of: lines, perDatagram: 10), to: relay.address)
        let expected = lines.map { expectedBackend(of: $0, backends: 2) }
        let wantUDP = zip(lines, expected).filter { $0.1 == 0 }.map(\.0)
        let wantTCP = zip(lines, expected).filter { $0.1 == 1 }.map(\.0)
        #expect(!wantUDP.isEmpty && !wantTCP.isEmpty)
        #expect(tcp.wait { $0.lines.count >= wantTCP.count })
        let received = try collect(from: [udp], expectedLines: wantUDP.count)
        let counters = relay.stop()
        #expect(Set(received.lines[0]) == Set(wantUDP) && received.lines[0].count == wantUDP.count)
        #expect(Set(tcp.lines) == Set(wantTCP) && tcp.lines.count == wantTCP.count)
        // UDP lines sent within 200 ms of the stop are unconfirmed, not sent.
        #expect(counters[.linesReceived] == counters.total(.linesSent) + unconfirmedAtExit(in: counters) + droppedLines(counters))
    }

    @Test("--sendproto TCP: a backend written without a scheme is reached over TCP", arguments: ioDrivers)
    func sendProtocolTCP(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TCPTestBackend()
        defer { backend.close() }
        var file = ConfigFile()
        file.sendproto = "TCP"
        var configured = RelayConfiguration(backends: [])
        try file.apply(to: &configured)
        #expect(configured.sendProtocol == .tcp)
        let relay = try startRelay([backend.plainSpec], driver: driver) { $0.sendProtocol = configured.sendProtocol }
        let lines = numberedLines(0..<50)
        try send(datagrams(of: lines, perDatagram: 5), to: relay.address)
        #expect(backend.wait { $0.lines.count >= lines.count })
        _ = relay.stop()
        #expect(backend.lines == lines)
    }

    @Test("a backend killed and restarted under traffic: reconnected, outage lines queued up to the bound then dropped and counted, accounting reconciles", arguments: ioDrivers)
    func killedAndRestarted(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TCPTestBackend()
        defer { backend.close() }
        let relay = try startRelay([backend.spec], driver: driver) { $0.tcpBackendQueueBytes = 64 << 10 }
        let identity = "127.0.0.1:\(backend.port)"
        let sender = try SteadySender(to: relay.address, maxDatagrams: 20_000_000) { index in
            Array("tcp.outage.\(index).\(String(repeating: "z", count: 40)):1|c".utf8)
        }
        #expect(backend.wait { $0.lines.count >= 1_000 }, "lines flow before the outage")
        try backend.kill()
        // The relay sees the failure, and its queue overflows while nothing listens.
        let counted = backend.wait(seconds: 20) { _ in
            let live = relay.relay.liveCounters()
            return live[.tcpConnectionFailures, backend: identity] > 0 && live[.linesDroppedTCPQueueFull, backend: identity] > 0
        }
        #expect(counted, "failures and queue-full drops counted during the outage")
        let before = backend.lines.count
        try backend.restart()
        #expect(backend.wait(seconds: 20) { $0.accepted >= 2 && $0.lines.count > before + 1_000 }, "reconnected and relaying again")
        sender.stop()
        let counters = relay.stop()
        let lines = backend.lines
        #expect(Set(lines).count == lines.count, "no line twice")
        let pad = String(repeating: "z", count: 40)
        let whole = lines.allSatisfy { line in
            let parts = line.split(separator: ".", omittingEmptySubsequences: false)
            return parts.count == 4 && parts[0] == "tcp" && parts[1] == "outage" && Int(parts[2]) != nil && parts[3] == "\(pad):1|c"
        }
        #expect(whole, "no cut line")
        let sent = counters[.linesSent, backend: identity]
        #expect(UInt64(lines.count) <= sent, "the backend got no line the relay did not count as sent")
        #expect(counters[.tcpConnects, backend: identity] >= 2)
        #expect(counters[.linesDroppedTCPQueueFull, backend: identity] > 0)
        #expect(counters[.bytesDroppedTCPQueueFull, backend: identity] >= counters[.linesDroppedTCPQueueFull, backend: identity] * 50)
        #expect(counters[.linesReceived] == sent + counters[.linesDroppedTCPQueueFull] + counters[.linesDroppedTCPUnsentAtExit] + unconfirmedAtExit(in: counters),
            "received = sent + dropped by reason + unconfirmed: \(counters.report())")
        #expect(droppedLines(counters) == counters[.linesDroppedTCPQueueFull] + counters[.linesDroppedTCPUnsentAtExit], "no other drop")
    }

    @Test("a backend that accepts and never reads: the worker keeps relaying to the others; its queue bound is reached and counted", arguments: ioDrivers)
    func neverReads(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let stuck = try TCPTestBackend(reading: false, receiveBufferBytes: 4_096)
        defer { stuck.close() }
        let udp = try TestBackend.avoiding([stuck.port])
        let relay = try startRelay([udp.spec, stuck.spec], driver: driver) {
            $0.tcpBackendQueueBytes = 64 << 10
            $0.backendSendBufferBytes = 4_096
            $0.shutdownTimeoutNanoseconds = 300_000_000
        }
        let lines = numberedLines(0..<20_000, pad: 30)
        let expected = lines.map { expectedBackend(of: $0, backends: 2) }
        let wantUDP = zip(lines, expected).filter { $0.1 == 0 }.map(\.0)
        try send(datagrams(of: lines, perDatagram: 20), to: relay.address)
        let received = try collect(from: [udp], expectedLines: wantUDP.count)
        #expect(received.totalLines == wantUDP.count, "every line for the UDP backend arrived")
        let identity = "127.0.0.1:\(stuck.port)"
        let counters = relay.stop()
        let tcpLines = UInt64(lines.count - wantUDP.count)
        let full = counters[.linesDroppedTCPQueueFull, backend: identity]
        #expect(full > 0 && full < tcpLines, "the bound was reached: \(full) of \(tcpLines) dropped for it")
        #expect(counters[.linesSent, backend: identity] + full + counters[.linesDroppedTCPUnsentAtExit, backend: identity]
            + counters[.linesUnconfirmedAtExit, backend: identity] == tcpLines)
        #expect(counters[.linesReceived] == counters.total(.linesSent) + unconfirmedAtExit(in: counters) + droppedLines(counters))
    }

    @Test("a connection reset with bytes unacknowledged counts their lines as lost (SIOCOUTQ at the reset)", arguments: ioDrivers)
    func lostAtReset(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        // It never reads: its small window fills, then the relay's bytes wait unacknowledged
        // in its own send buffer until the backend dies and resets the connection.
        let backend = try TCPTestBackend(reading: false, receiveBufferBytes: 4_096)
        defer { backend.close() }
        let relay = try startRelay([backend.spec], driver: driver) {
            $0.backendSendBufferBytes = 16_384
            $0.tcpBackendQueueBytes = 64 << 10
        }
        let identity = "127.0.0.1:\(backend.port)"
        let lines = numberedLines(0..<5_000, pad: 30)
        try send(datagrams(of: lines, perDatagram: 50), to: relay.address)
        #expect(backend.wait { _ in relay.relay.liveCounters()[.linesDroppedTCPQueueFull, backend: identity] > 0 }, "the queue filled")
        try backend.kill()
        // The reset is seen at the next write or poll; more lines make sure one is tried.
        let seen = backend.wait { _ in
            try? send(datagrams(of: numberedLines(5_000..<5_010, pad: 30), perDatagram: 10), to: relay.address)
            return relay.relay.liveCounters()[.tcpConnectionFailures, backend: identity] > 0
        }
        #expect(seen, "the reset was seen")
        let counters = relay.stop()
        let lost = counters[.tcpLinesLostAtReset, backend: identity]
        #expect(lost > 0 && lost <= counters[.linesSent, backend: identity], "lost \(lost) of \(counters[.linesSent, backend: identity]) sent")
        #expect(counters[.tcpBytesLostAtReset, backend: identity] >= lost * 40, "each line is over 40 bytes")
        #expect(counters[.linesReceived] == counters.total(.linesSent) + unconfirmedAtExit(in: counters) + droppedLines(counters))
    }

    @Test("a stop writes what the queue holds within the stop budget and counts the rest; the backend gets exactly the lines counted sent or unconfirmed", arguments: ioDrivers)
    func stopWritesTheQueue(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        // A slow reader behind small buffers: when the stop comes, most of the queue is unwritten.
        let backend = try TCPTestBackend(receiveBufferBytes: 4_096, readChunk: 512)
        defer { backend.close() }
        let relay = try startRelay([backend.spec], driver: driver) {
            $0.backendSendBufferBytes = 4_096
            $0.shutdownTimeoutNanoseconds = 300_000_000
        }
        let identity = "127.0.0.1:\(backend.port)"
        let lines = numberedLines(0..<20_000)
        try send(datagrams(of: lines, perDatagram: 100), to: relay.address)
        #expect(backend.wait { $0.lines.count > 0 }, "writing began")
        let counters = relay.stop()
        let sent = counters[.linesSent, backend: identity]
        let unsent = counters[.linesDroppedTCPUnsentAtExit, backend: identity]
        // Written and not acknowledged when the stop came: the kernel may still deliver them.
        let unconfirmed = counters[.linesUnconfirmedAtExit, backend: identity]
        #expect(sent + unconfirmed + unsent + counters[.linesDroppedTCPQueueFull, backend: identity] == UInt64(counters[.linesReceived]))
        #expect(counters[.linesReceived] == UInt64(lines.count), "every datagram was taken before the stop")
        // What the kernel accepted it still delivers after the exit (the backend goes on
        // reading): every line counted sent, then the unconfirmed ones, in order.
        #expect(backend.wait { $0.lines.count >= Int(sent + unconfirmed) })
        usleep(100_000)
        #expect(backend.lines == Array(lines.prefix(Int(sent + unconfirmed))), "exactly the lines counted sent or unconfirmed, in order, none cut")
    }

    @Test("pool changes keep a TCP backend's connection; its lines arrive once; a removed one keeps its counts", arguments: ioDrivers)
    func poolChanges(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let tcp = try TCPTestBackend()
        defer { tcp.close() }
        let udp = try (0..<2).map { _ in try TestBackend.avoiding([tcp.port]) }
        let relay = try startRelay([tcp.spec, udp[0].spec], driver: driver)
        let pools = [[udp[0].spec, tcp.spec, udp[1].spec], [udp[1].spec, tcp.spec], [udp[0].spec, udp[1].spec]]
        var udpLines: [[String]] = [[], []]
        var sent = 0
        for (step, pool) in ([[tcp.spec, udp[0].spec]] + pools).enumerated() {
            if step > 0 { try relay.relay.replaceBackends(pool.map { try BackendAddress(parsing: $0) }) }
            // Wait for the change to be in force before the step's lines (every worker applies it at a turn).
            #expect(tcp.wait { _ in relay.relay.liveCounters()[.poolChanges] == UInt64(step) })
            let lines = numberedLines(sent..<sent + 500)
            sent += 500
            // Counted before the lines go: the backend may have some of them by the time they are sent.
            let tcpWanted = tcp.lines.count + lines.count { line in
                pool[expectedBackend(of: line, backends: pool.count)] == tcp.spec
            }
            try send(datagrams(of: lines, perDatagram: 10), to: relay.address)
            #expect(tcp.wait { $0.lines.count >= tcpWanted }, "step \(step): \(tcp.lines.count) of \(tcpWanted) lines; \(relay.relay.liveCounters().report())")
            let udpWanted = lines.filter { pool[expectedBackend(of: $0, backends: pool.count)] != tcp.spec }.count
            let received = try collect(from: udp, expectedLines: udpWanted)
            for index in udp.indices { udpLines[index] += received.lines[index] }
        }
        let counters = relay.stop()
        let all = tcp.lines + udpLines[0] + udpLines[1]
        #expect(all.count == sent && Set(all).count == sent, "every line once")
        #expect(tcp.accepted == 1, "the TCP backend kept its connection through the changes")
        let identity = "127.0.0.1:\(tcp.port)"
        #expect(counters[.linesSent, backend: identity] == UInt64(tcp.lines.count), "its counts kept after its removal")
        #expect(counters[.tcpConnects, backend: identity] == 1)
    }

    @Test("a TCP backend removed by a reload still writes what its queue held: no line lost", arguments: ioDrivers)
    func removedWritesItsQueue(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        // It reads nothing until the removal is in force: what it has not got then was queued
        // in the relay (beyond its small socket buffers) when the backend left the pool.
        let tcp = try TCPTestBackend(receiveBufferBytes: 4_096)
        defer { tcp.close() }
        tcp.pauseReading(true)
        let udp = try TestBackend.avoiding([tcp.port])
        let relay = try startRelay([tcp.spec, udp.spec], driver: driver) { $0.backendSendBufferBytes = 4_096 }
        let identity = "127.0.0.1:\(tcp.port)"
        let lines = numberedLines(0..<2_000)
        let wantTCP = lines.filter { expectedBackend(of: $0, backends: 2) == 0 }
        let wantUDP = lines.filter { expectedBackend(of: $0, backends: 2) == 1 }
        try send(datagrams(of: lines, perDatagram: 100), to: relay.address)
        // Every datagram relayed (the UDP backend has its share) before the removal.
        let udpLines = try collect(from: [udp], expectedLines: wantUDP.count).lines[0]
        #expect(udpLines.count == wantUDP.count)
        try relay.relay.replaceBackends([try BackendAddress(parsing: udp.spec)])
        #expect(tcp.wait { _ in relay.relay.liveCounters()[.poolChanges] == 1 })
        #expect(tcp.lines.isEmpty)
        tcp.pauseReading(false)
        #expect(tcp.wait { $0.lines.count >= wantTCP.count }, "\(tcp.lines.count) of \(wantTCP.count) lines arrived")
        let counters = relay.stop()
        #expect(counters[.linesDroppedTCPUnsentAtExit, backend: identity] == 0)
        #expect(UInt64(tcp.lines.count) == counters[.linesSent, backend: identity])
        #expect(tcp.lines == wantTCP, "every line once, in order")
        // More than twice what its socket buffers hold (8 KiB sent, 4 KiB received): most of it was written after the removal.
        #expect(wantTCP.count * 40 > 2 * 12_288)
    }

    @Test("refused connections take a TCP backend down even while its health check passes", arguments: ioDrivers)
    func refusalsTakeItDown(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let live = try TCPTestBackend()
        defer { live.close() }
        // The dead backend's check port answers (a listener of its own); its data port refuses.
        let checker = try TCPTestBackend()
        defer { checker.close() }
        let dead = try TCPTestBackend()
        try dead.kill()  // refuses connections; its port stays held
        defer { dead.close() }
        var deadBackend = try BackendAddress(parsing: dead.spec)
        deadBackend.healthCheckPort = checker.port
        let relay = try InProcessRelay(backends: [], driver: driver) { configuration in
            configuration.backends = [try! BackendAddress(parsing: live.spec), deadBackend]
            configuration.healthCheck = .tcp
            configuration.healthIntervalNanoseconds = 50_000_000
            configuration.healthTimeoutNanoseconds = 40_000_000
            configuration.healthFall = 2
        }
        // Traffic for both keeps the dead one's link reconnecting (it backs off, 100 ms first).
        let sender = try SteadySender(to: relay.address, maxDatagrams: 2_000_000) { index in
            Array("tcp.health.\(index % 500):1|c".utf8)
        }
        let down = relay.relay.monitor.waitUntil(timeoutNanoseconds: 10_000_000_000) { statuses in
            statuses.count == 2 && statuses[1].state == .down
        }
        sender.stop()
        let statuses = relay.relay.monitor.status
        _ = relay.stop()
        #expect(down, "the backend whose connections are refused went down")
        #expect(statuses.first?.state == .up, "the live one stayed up")
        #expect(statuses.last?.lastFailure?.contains("TCP connections refused or reset") == true, "\(statuses.last?.lastFailure ?? "none")")
        #expect(checker.accepted > 0, "its health check connected (and passed)")
    }

    @Test("partial writes (tiny SO_SNDBUF, slow reader) resume where they stopped: no line cut or sent twice", arguments: ioDrivers)
    func partialWrites(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TCPTestBackend(receiveBufferBytes: 4_096, readChunk: 777)
        defer { backend.close() }
        // SO_SNDBUF 4 KiB (the kernel makes it 8 KiB): every write of more than that is
        // partial, and 10 000 lines in 200-line datagrams queue far more.
        let relay = try startRelay([backend.spec], driver: driver) { $0.backendSendBufferBytes = 4_096 }
        let lines = numberedLines(0..<10_000)
        try send(datagrams(of: lines, perDatagram: 200), to: relay.address)
        #expect(backend.wait(seconds: 30) { $0.lines.count >= lines.count })
        let counters = relay.stop()
        let stream = backend.streams.reduce([], +)
        #expect(stream.count > 40 * 8_192)
        #expect(String(decoding: stream, as: UTF8.self) == lines.map { $0 + "\n" }.joined())
        #expect(counters[.linesSent, backend: "127.0.0.1:\(backend.port)"] == UInt64(lines.count))
    }

    @Test("a TCP backend refusing connections fails its health checks through the refusal path", arguments: ioDrivers)
    func refusedMarksDown(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let live = try TCPTestBackend()
        defer { live.close() }
        let dead = try TCPTestBackend()
        try dead.kill()  // nothing listens on its port any more; the port stays held
        defer { dead.close() }
        let relay = try startRelay([live.spec, dead.spec], driver: driver) {
            $0.healthCheck = .none
        }
        let identity = "127.0.0.1:\(dead.port)"
        let lines = numberedLines(0..<200)
        try send(datagrams(of: lines, perDatagram: 10), to: relay.address)
        #expect(live.wait { _ in relay.relay.liveCounters()[.tcpConnectionFailures, backend: identity] > 0 })
        _ = relay.stop()
        let evidence = RoutingState(pool: BackendPool(
            backends: [try BackendAddress(parsing: dead.spec)], addresses: [SocketAddress(numericHost: "127.0.0.1", port: dead.port)!],
            policy: .rehash))
        let board = CounterBoard()
        var counters = RelayCounters(backends: [identity])
        evidence.watchRefusals(on: board)
        counters.add(3, to: .tcpConnectionFailures, backend: identity)
        board.publish(counters, at: 1)
        #expect(evidence.takeRefusalsByBackend()[identity] == 3, "connection failures are refusal evidence for the health monitor")
    }
}

@Suite("TCP backends on the command line: -sendproto, schemes, bad values", .onOwnThread)
struct TCPBackendCommandLineTests {
    @Test("the executable relays over TCP with the Go StatsRelay's single-dash -sendproto TCP; the start-up log shows tcp://", arguments: ioDrivers)
    func singleDashSendProtocol(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TCPTestBackend()
        defer { backend.close() }
        let relay = try RelayProcess(driver: driver, [
            "--bind", "127.0.0.1", "--port", "0", "--threads", "1", "-sendproto", "TCP", backend.plainSpec,
        ])
        let address = try relay.listenAddress()
        #expect(relay.logLine(containing: "listening on ")?.contains("0:tcp://\(backend.plainSpec)") == true)
        let lines = numberedLines(0..<100)
        try send(datagrams(of: lines, perDatagram: 10), to: address)
        #expect(backend.wait { $0.lines.count >= lines.count })
        relay.signal(SIGTERM)
        #expect(relay.waitForExit() == 0)
        #expect(backend.lines == lines)
        #expect(relay.counter("statsrelay.backend.lines_sent{backend=\"\(backend.plainSpec)\"}") == UInt64(lines.count))
    }

    @Test("a bad scheme, -sendproto or --tcp-backend-queue exits 64 naming it", arguments: [
        (["ftp://127.0.0.1:9"], "invalid backend 'ftp://127.0.0.1:9': unknown scheme 'ftp://' (expected udp:// or tcp://)"),
        (["127.0.0.1:9", "tcp://"], "invalid backend 'tcp://'"),
        (["-sendproto", "SCTP", "127.0.0.1:9"], "sendproto 'SCTP': expected UDP or TCP"),
        (["--sendproto", "quic", "127.0.0.1:9"], "sendproto 'quic': expected UDP or TCP"),
        (["--tcp-backend-queue", "1KiB", "127.0.0.1:9"], "--tcp-backend-queue '1KiB'"),
    ])
    func badValues(_ arguments: [String], _ message: String) throws {
        let result = try RelayProcess.run(arguments)
        #expect(result.status == 64)
        #expect(result.error.contains(message), "stderr: \(result.error)")
    }
}

/// A TCP backend that stops reading while its name moves, or while a reload removes it: the
/// io_uring driver's `send` waiting in the kernel for room on the old connection is ended
/// (its socket's writing side shut down), so the link goes on at the new address, or is
/// finished and freed, instead of waiting for a peer that never reads.
@Suite("TCP backends stuck in a send: name moves and removals", .serialized, .onOwnThread)
struct TCPBackendStuckSendTests {
    /// A traffic thread's stop flag and the datagrams it sent.
    final class TrafficFlags: Sendable {
        let stop = Atomic<Bool>(false)
        let datagrams = Atomic<Int>(0)
    }

    @Test("a name moving off a backend that stopped reading: lines sent after the move reach the new address; every line is accounted for", arguments: ioDrivers)
    func moveOffStuck(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let stuck = try TCPTestBackend(reading: false, receiveBufferBytes: 4_096)
        defer { stuck.close() }
        let good = try TCPTestBackend()
        defer { good.close() }
        let book = NameBook(["moving.test": SocketAddress(numericHost: "127.0.0.1", port: stuck.port)!])
        let (relay, listen, log) = try relayFollowing(names: [("tcp://moving.test", stuck.port)], book: book, driver: driver) {
            $0.tcpBackendQueueBytes = 64 << 10
            $0.backendSendBufferBytes = 4_096
        }
        let identity = "moving.test:\(stuck.port)"
        try send(datagrams(of: numberedLines(0..<5_000, pad: 30), perDatagram: 50), to: listen)
        // The queue fills only once the old connection's buffers are full: a send then waits.
        #expect(stuck.wait { _ in relay.liveCounters()[.linesDroppedTCPQueueFull, backend: identity] > 0 }, "the old connection stopped taking bytes")
        book.point("moving.test", to: SocketAddress(numericHost: "127.0.0.1", port: good.port)!)
        // Probes until one reaches the new address (the worker follows at its next turn after
        // the refresh; a probe before that finds the queue full and is counted dropped).
        var probes = 0
        var arrived = false
        while !arrived && probes < 40 {
            try send(["moved.probe.\(probes):1|c"], to: listen)
            probes += 1
            arrived = good.wait(seconds: 0.25) { $0.lines.contains { $0.hasPrefix("moved.probe.") } }
        }
        #expect(arrived, "a line sent after the move reached the new address (\(probes) probes)")
        #expect(log.withLock { $0 }.contains("backend address changed"))
        relay.stop()
        let counters = relay.wait().counters
        #expect(counters[.linesReceived] == counters.total(.linesSent) + unconfirmedAtExit(in: counters) + droppedLines(counters),
                "every line is sent, unconfirmed or dropped, counted once")
    }

    @Test("a name moving back and forth under steady traffic (a send prepared or in flight at the move): no line reaches the backends twice, none arrives cut; every line is accounted for", arguments: ioDrivers)
    func moveUnderTraffic(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let targets = try (0..<2).map { _ in try TCPTestBackend() }
        defer { for target in targets { target.close() } }
        func address(_ target: TCPTestBackend) -> SocketAddress { SocketAddress(numericHost: "127.0.0.1", port: target.port)! }
        let book = NameBook(["moving.test": address(targets[0])])
        let (relay, listen, log) = try relayFollowing(names: [("tcp://moving.test", targets[0].port)], book: book, driver: driver)
        let identity = "moving.test:\(targets[0].port)"
        // Traffic at every turn of the worker, so a move finds the link with a write just
        // prepared (io_uring: a `send` SQE not yet submitted) or in flight. Paced, not
        // synchronised: bounded by `limit` datagrams of 10 lines.
        let limit = 60_000
        let traffic = TrafficFlags()
        let blaster = try WorkerThreadHandle(WorkerThread(name: "test-traffic", cpu: nil) { _ in
            guard let sender = try? UDPSocket.bound(to: SocketAddress(numericHost: "127.0.0.1", port: 0)!) else { return }
            var index = 0
            while index < limit && !traffic.stop.load(ordering: .relaxed) {
                let lines = numberedLines(index * 10..<index * 10 + 10, pad: 30)
                _ = try? sender.send(Array(lines.joined(separator: "\n").utf8), to: listen)
                index += 1
                traffic.datagrams.store(index, ordering: .releasing)
                usleep(200)
            }
        })
        for move in 1...8 {
            let target = targets[move % 2]
            let before = target.accepted
            book.point("moving.test", to: address(target))
            #expect(target.wait(seconds: 10) { $0.accepted > before && ($0.streams.last?.isEmpty == false) }, "move \(move): lines reach the new address")
        }
        traffic.stop.store(true, ordering: .relaxed)
        blaster.join()
        #expect(log.withLock { $0 }.contains("backend address changed"))
        relay.stop()
        let counters = relay.wait().counters
        let sent = counters[.linesSent, backend: identity]
        let lost = counters[.tcpLinesLostAtReset, backend: identity]
        #expect(counters[.linesReceived] == counters.total(.linesSent) + unconfirmedAtExit(in: counters) + droppedLines(counters),
                "every line is sent, unconfirmed or dropped, counted once")
        // What the backends' kernels acknowledged reaches them.
        #expect(targets[0].wait(seconds: 10) { _ in UInt64(targets.map(\.lines.count).reduce(0, +)) >= sent - lost })
        let delivered = targets.flatMap(\.lines)
        let offered = Set(numberedLines(0..<traffic.datagrams.load(ordering: .acquiring) * 10, pad: 30))
        #expect(Set(delivered).count == delivered.count, "no line twice: \(delivered.count - Set(delivered).count) duplicated")
        #expect(delivered.allSatisfy { offered.contains($0) }, "no line cut or joined")
        #expect(UInt64(delivered.count) <= sent + counters[.linesUnconfirmedAtExit, backend: identity],
                "delivered \(delivered.count), counted sent \(sent) and unconfirmed \(counters[.linesUnconfirmedAtExit, backend: identity])")
    }

    @Test("a backend removed by a reload while it stopped reading: once its time to write is out, the relay lets its connection go; every line is accounted for", arguments: ioDrivers)
    func removedWhileStuck(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let stuck = try TCPTestBackend(reading: false, receiveBufferBytes: 4_096)
        defer { stuck.close() }
        let udp = try TestBackend.avoiding([stuck.port])
        let relay = try startRelay([stuck.spec, udp.spec], driver: driver) {
            $0.tcpBackendQueueBytes = 64 << 10
            $0.backendSendBufferBytes = 4_096
        }
        let identity = "127.0.0.1:\(stuck.port)"
        try send(datagrams(of: numberedLines(0..<5_000, pad: 30), perDatagram: 50), to: relay.address)
        #expect(stuck.wait { _ in relay.relay.liveCounters()[.linesDroppedTCPQueueFull, backend: identity] > 0 }, "the connection stopped taking bytes")
        #expect(Self.states(ofConnectionsTo: stuck.port) == ["01"], "one connection, established")
        try relay.relay.replaceBackends([try BackendAddress(parsing: udp.spec)])
        // A second to write (TCPBackendLink's grace for a removed backend), then given up: its
        // socket must close (FIN_WAIT1, its FIN behind the unread bytes), not stay established
        // under a send the kernel holds for as long as the peer's window stays shut.
        #expect(
            stuck.wait(seconds: 10) { _ in !Self.states(ofConnectionsTo: stuck.port).contains("01") },
            "still established: \(Self.states(ofConnectionsTo: stuck.port))")
        let counters = relay.stop()
        #expect(counters[.linesDroppedTCPUnsentAtExit, backend: identity] > 0, "what it never wrote is counted")
        #expect(counters[.linesReceived] == counters.total(.linesSent) + unconfirmedAtExit(in: counters) + droppedLines(counters),
                "every line is sent, unconfirmed or dropped, counted once")
    }

    /// The states (`/proc/net/tcp`'s `st`, hex: `01` established, `04` FIN_WAIT1, …) of the
    /// IPv4 sockets connected to 127.0.0.1:`port` in the calling thread's network namespace
    /// (`thread-self`: another suite may have moved the process's first thread elsewhere),
    /// leaving out TIME_WAIT (`06`): connections of earlier tests whose backend had the same
    /// port number linger in it for a minute, closed, and are not this relay's.
    /// Read until two readings agree (`agreedReading`).
    static func states(ofConnectionsTo port: UInt16) -> [String] {
        agreedReading { statesOnce(ofConnectionsTo: port) }
    }

    /// One reading of `states(ofConnectionsTo:)`.
    private static func statesOnce(ofConnectionsTo port: UInt16) -> [String] {
        // Read whole (FileContents reads to the end: a proc file reports no size).
        guard let bytes = try? FileContents.read(path: "/proc/thread-self/net/tcp") else { return [] }
        let table = String(decoding: bytes, as: UTF8.self)
        let remote = String(format: "0100007F:%04X", port)
        return table.split(separator: "\n").dropFirst().compactMap { row in
            let fields = row.split(separator: " ")
            return fields.count > 3 && fields[2] == remote && fields[3] != "06" ? String(fields[3]) : nil
        }
    }
}
