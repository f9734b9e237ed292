import Foundation
import Glibc
@testable import RelayKernel
import RoutingReference
import Testing
@testable import UringRelay

/// A blocking TCP client of the relay's TCP listener, for the tests (plain Glibc calls: test
/// code, not the relay's); it writes text or raw bytes (junk included).
final class TCPIngestClient: @unchecked Sendable {  // each used from one thread at a time
    let descriptor: Int32

    /// Connects to `address` (loopback IPv4).
    init(to address: SocketAddress) throws {
        descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else { throw Errno(rawValue: errno) }
        var one: Int32 = 1
        _ = setsockopt(descriptor, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        let result = address.withUnsafeSockaddr { pointer, length in connect(descriptor, pointer, length) }
        guard result == 0 else {
            let code = errno
            Glibc.close(descriptor)
            throw Errno(rawValue: code)
        }
    }

    deinit { Glibc.close(descriptor) }

    /// Writes all of `text`.
    func write(_ text: String) throws { try write(Array(text.utf8)) }

    /// Writes all of `bytes`.
    func write(_ bytes: [UInt8]) throws {
        var sent = 0
        while sent < bytes.count {
            let result = bytes[sent...].withUnsafeBytes { Glibc.send(descriptor, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if result < 0 {
                if errno == EINTR { continue }
                throw Errno(rawValue: errno)
            }
            sent += result
        }
    }

    /// Waits up to `seconds` until the peer's kernel has acknowledged every byte written (the
    /// socket's send queue, `tx_queue` in `/proc/net/tcp`, is empty): they are then in the
    /// relay's socket, read or not.
    func waitUntilAcknowledged(seconds: Double) -> Bool {
        /// The port of this socket's own end (`getsockname`) or its peer's (`getpeername`).
        func port(_ name: (Int32, UnsafeMutablePointer<sockaddr>, UnsafeMutablePointer<socklen_t>) -> Int32) -> UInt16? {
            var address = sockaddr_in()
            var length = socklen_t(MemoryLayout<sockaddr_in>.size)
            let result = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { name(descriptor, $0, &length) } }
            return result == 0 ? UInt16(bigEndian: address.sin_port) : nil
        }
        guard let local = port({ getsockname($0, $1, $2) }), let remote = port({ getpeername($0, $1, $2) }) else { return false }
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            // Read to the end: a single read of a /proc table returns only its first page.
            let table = String(decoding: FileHandle(forReadingAtPath: "/proc/net/tcp")?.readDataToEndOfFile() ?? Data(), as: UTF8.self)
            // This connection's row (its two ports; loopback IPv4), whatever other sockets use
            // one of them (a TIME_WAIT, another test's).
            let queued = table.split(separator: "\n").dropFirst().compactMap { row -> Int? in
                let fields = row.split(separator: " ")
                guard fields.count > 4, let ownPort = fields[1].split(separator: ":").last, UInt16(ownPort, radix: 16) == local,
                      let peerPort = fields[2].split(separator: ":").last, UInt16(peerPort, radix: 16) == remote,
                      let sendQueue = fields[4].split(separator: ":").first else { return nil }
                return Int(sendQueue, radix: 16)
            }
            if queued == [0] { return true }
            usleep(2_000)
        }
        return false
    }

    /// Closes the writing side (FIN): the relay reads the end of the stream.
    func finish() { shutdown(descriptor, Int32(SHUT_WR)) }

    /// A client's next step on a connection the relay ended.
    enum Step: String, CaseIterable, Sendable { case read, write }

    /// Waits up to `seconds` for the relay to end the connection (the socket reads as
    /// readable, hung up or in error), then makes `step`, a `recv` or a one-line `send`.
    ///
    /// - Returns: `recv`'s or `send`'s result, `-errno` on failure (0: a read found a FIN);
    ///   `nil` if nothing ended the connection in time.
    func next(_ step: Step, seconds: Double) -> Int? {
        var entry = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
        guard poll(&entry, 1, Int32(seconds * 1_000)) > 0 else { return nil }
        var bytes = Array("after.end:1|c\n".utf8)
        let result = bytes.withUnsafeMutableBytes { buffer in
            switch step {
            case .read: recv(descriptor, buffer.baseAddress, buffer.count, Int32(MSG_DONTWAIT))
            case .write: Glibc.send(descriptor, buffer.baseAddress, buffer.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT))
            }
        }
        return result < 0 ? -Int(errno) : result
    }

    /// Waits up to `seconds` for the relay to close the connection: a read that finds its end
    /// (or a reset).
    func waitForClose(seconds: Double) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        var scratch = [UInt8](repeating: 0, count: 256)
        while Date() < deadline {
            var entry = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
            guard poll(&entry, 1, 50) > 0 else { continue }
            let result = scratch.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            if result == 0 || (result < 0 && errno != EAGAIN && errno != EINTR) { return true }
        }
        return false
    }
}

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit (for a thousand connections
/// with both ends in this process).
func raiseOpenFileLimit() -> Int {
    var limit = rlimit()
    getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit)
    limit.rlim_cur = limit.rlim_max
    setrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit)
    getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit)
    return Int(clamping: limit.rlim_cur)
}

/// Waits until `condition` holds of the relay's live counters, or `seconds` pass.
func waitForCounters(_ relay: Relay, seconds: Double = 5, _ condition: (RelayCounters) -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if condition(relay.liveCounters()) { return true }
        usleep(20_000)
    }
    return false
}

/// TCP ingest (`--tcp-port`, a `tcp:ADDR:PORT` listener): newline-delimited lines over TCP,
/// framed per connection, relayed as a datagram's lines are, counted under `tcp:ADDR:PORT`.
@Suite("TCP ingest", .serialized, .timeLimit(.minutes(1)), .onOwnThread)
struct TCPIngestTests {
    /// A relay on `driver` with a TCP listener on 127.0.0.1 (port chosen by the kernel).
    private func relay(
        _ backends: [TestBackend], driver: IOBackendChoice, configure: (inout RelayConfiguration) -> Void = { _ in }
    ) throws -> (InProcessRelay, SocketAddress) {
        let relay = try InProcessRelay(backends: backends, driver: driver) { configuration in
            configuration.tcpPort = 0
            configure(&configuration)
        }
        let tcp = try #require(relay.relay.tcpListenAddresses.first)
        #expect(tcp.port != 0)
        return (relay, tcp)
    }

    @Test("a line cut at every byte position across two writes arrives whole, routed as over UDP (ReferenceRouting), counted under tcp:ADDR", arguments: ioDrivers)
    func splitLines(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backends = try (0..<3).map { _ in try TestBackend() }
        let (relay, tcp) = try self.relay(backends, driver: driver)
        let line = "split.metric.name:12.5|ms|@0.5|#a:b"
        var sent: [String] = []
        let client = try TCPIngestClient(to: tcp)
        for cut in 1..<line.utf8.count + 1 {
            let text = Array("\(line).\(cut)\n".utf8)
            let named = "\(line).\(cut)"
            // Cut inside the line (or just before its newline); a pause lets the relay read the
            // first part alone (if the kernel joins them, the line must still arrive whole).
            try client.write(String(decoding: text[..<cut], as: UTF8.self))
            usleep(500)
            try client.write(String(decoding: text[cut...], as: UTF8.self))
            sent.append(named)
        }
        // Many lines in writes of every size 1-97 bytes.
        var stream = ""
        for index in 0..<400 { stream += "chunked.\(index):\(index)|c\n" }
        let bytes = Array(stream.utf8)
        var offset = 0
        var size = 1
        while offset < bytes.count {
            let end = min(bytes.count, offset + size)
            try client.write(String(decoding: bytes[offset..<end], as: UTF8.self))
            offset = end
            size = size % 97 + 1
        }
        sent += (0..<400).map { "chunked.\($0):\($0)|c" }
        let received = try collect(from: backends, expectedLines: sent.count)
        let lines = received.lines.flatMap { $0 }
        #expect(lines.sorted() == sent.sorted(), "every line once, whole")
        for (index, backendLines) in received.lines.enumerated() {
            #expect(backendLines.allSatisfy { expectedBackend(of: $0, backends: backends.count) == index }, "backend \(index) got only its lines")
        }
        let counters = relay.stop()
        let label = "tcp:\(tcp)"
        #expect(counters.listeners.contains(label))
        #expect(counters[.linesReceived, listener: label] == UInt64(sent.count))
        #expect(counters[.tcpConnectionsAccepted, listener: label] == 1)
        #expect(counters[.tcpConnectionsClosedStop, listener: label] == 1, "still open at the stop")
        #expect(counters[.linesDroppedTCPPartial] == 0)
    }

    @Test("1 000 concurrent connections each send lines: every line arrives exactly once; each connection counted accepted and closed by its peer", arguments: ioDrivers)
    func thousandConnections(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let limit = raiseOpenFileLimit()
        try #require(limit >= 2_500, "RLIMIT_NOFILE hard limit \(limit) is too low for 1 000 connections")
        let backends = try (0..<2).map { _ in try TestBackend() }
        let (relay, tcp) = try self.relay(backends, driver: driver) { configuration in
            configuration.threads = 2
            let cpu = nextTestCPU()
            configuration.cpus = [cpu, cpu]
        }
        let count = 1_000
        var clients: [TCPIngestClient] = []
        for _ in 0..<count { clients.append(try TCPIngestClient(to: tcp)) }
        for (index, client) in clients.enumerated() { try client.write("conn.\(index).a:1|c\nconn.\(index).b:2|g\n") }
        for (index, client) in clients.enumerated() { try client.write("conn.\(index).c:3|ms\n") }
        for client in clients { client.finish() }
        let expected = (0..<count).flatMap { ["conn.\($0).a:1|c", "conn.\($0).b:2|g", "conn.\($0).c:3|ms"] }
        let received = try collect(from: backends, expectedLines: expected.count, seconds: 20)
        #expect(received.lines.flatMap { $0 }.sorted() == expected.sorted(), "every line exactly once")
        let label = "tcp:\(tcp)"
        #expect(waitForCounters(relay.relay) { $0[.tcpConnectionsClosedPeer, listener: label] == UInt64(count) }, "each close read")
        clients.removeAll()
        let counters = relay.stop()
        #expect(counters[.tcpConnectionsAccepted, listener: label] == UInt64(count))
        #expect(counters[.tcpConnectionsClosedPeer, listener: label] == UInt64(count))
        #expect(counters[.tcpConnectionsRefused, listener: label] == 0)
    }

    @Test(
        "a line longer than --max-datagram closes that connection only (counted too_long); the lines before it and another client's are relayed; every byte it sent is relayed or counted dropped (too_long, unread)",
        arguments: ioDrivers)
    func overLongLine(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let (relay, tcp) = try self.relay([backend], driver: driver) { $0.maxDatagramBytes = 512 }
        let long = try TCPIngestClient(to: tcp)
        let other = try TCPIngestClient(to: tcp)
        try other.write("other.before:1|c\n")
        // One write, one loopback segment: all of it is in the relay's socket before the relay
        // reads any, so every byte is either read or still there when the connection closes.
        let before = "long.before:1|c\n"
        let after = (0..<100).map { "long.after.\($0):1|c\n" }.joined()
        let sent = before + "long.too:" + String(repeating: "9", count: 600) + "\n" + after
        try long.write(sent)
        #expect(long.waitForClose(seconds: 5), "the relay closes the connection with the over-long line")
        try other.write("other.after:1|c\n")
        let received = try collect(from: [backend], expectedLines: 3)
        #expect(received.lines[0].sorted() == ["long.before:1|c", "other.after:1|c", "other.before:1|c"])
        let counters = relay.stop()
        let label = "tcp:\(tcp)"
        #expect(counters[.tcpConnectionsClosedTooLong, listener: label] == 1)
        #expect(counters[.tcpConnectionsClosedStop, listener: label] == 1, "the other connection stayed open")
        // The over-long line's first 513 bytes at least were read and thrown away with it; what
        // was not read (parked unframed, or still in the socket) is counted unread.
        #expect(counters[.tcpBytesDroppedTooLong] >= 513)
        #expect(counters[.tcpBytesDroppedUnread] > 0, "the lines after the over-long one were never read")
        #expect(counters[.tcpBytesDroppedTooLong] + counters[.tcpBytesDroppedUnread] == UInt64(sent.utf8.count - before.utf8.count))
        #expect(counters[.tcpBytesDroppedPartial] == 0)
    }

    @Test("a line longer than --max-datagram is counted as a datagram's too long line is: received on its listener and dropped too_long, so lines received = forwarded + dropped",
          arguments: ioDrivers)
    func overLongLineCounted(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let (relay, tcp) = try self.relay([backend], driver: driver) { $0.maxDatagramBytes = 512 }
        let label = "tcp:\(tcp)"
        // One over-long line whole in one write, one that grows past the limit from a partial
        // line held across writes, and a malformed line beside good ones.
        let whole = try TCPIngestClient(to: tcp)
        try whole.write("whole.before:1|c\nwhole.too:" + String(repeating: "9", count: 600) + "\n")
        let grown = try TCPIngestClient(to: tcp)
        try grown.write("grown.before:1|c\ngrown.too:")
        #expect(waitForCounters(relay.relay) { $0[.linesForwarded] == 2 }, "the lines before the over-long ones relayed")
        try grown.write(String(repeating: "9", count: 600) + "\n")
        let other = try TCPIngestClient(to: tcp)
        try other.write("nocolon\nother.after:1|c\n")
        #expect(whole.waitForClose(seconds: 5) && grown.waitForClose(seconds: 5), "each over-long line closes its connection")
        let received = try collect(from: [backend], expectedLines: 3)
        #expect(received.lines[0].sorted() == ["grown.before:1|c", "other.after:1|c", "whole.before:1|c"])
        let counters = relay.stop()
        #expect(counters[.linesDroppedTooLong] == 2, "each over-long line dropped too_long")
        #expect(counters[.tcpConnectionsClosedTooLong, listener: label] == 2)
        #expect(counters[.linesDroppedMissingColon] == 1)
        #expect(counters[.linesReceived, listener: label] == 6, "3 relayed, 1 malformed, 2 too long")
        #expect(counters[.linesReceived] == counters[.linesForwarded] + counters[.linesDroppedTooLong] + counters[.linesDroppedMissingColon])
        #expect(counters[.linesDroppedTCPPartial] == 0, "an over-long line is not a partial line")
    }

    @Test("--tcp-max-connections: a connection over the limit is accepted and reset at once, and counted refused", arguments: ioDrivers)
    func maxConnections(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let (relay, tcp) = try self.relay([backend], driver: driver) { $0.tcpMaxConnections = 2 }
        let first = try TCPIngestClient(to: tcp)
        let second = try TCPIngestClient(to: tcp)
        try first.write("first:1|c\n")
        try second.write("second:1|c\n")
        _ = try collect(from: [backend], expectedLines: 2)
        let third = try TCPIngestClient(to: tcp)
        #expect(third.waitForClose(seconds: 5), "the third connection is closed at once")
        try first.write("first.again:1|c\n")
        let received = try collect(from: [backend], expectedLines: 1)
        #expect(received.lines[0] == ["first.again:1|c"])
        let counters = relay.stop()
        let label = "tcp:\(tcp)"
        #expect(counters[.tcpConnectionsRefused, listener: label] == 1)
        #expect(counters[.tcpConnectionsAccepted, listener: label] == 2)
    }

    @Test("--tcp-max-connections: a connection over the limit is reset, not closed with a FIN: the client's next read or write fails with ECONNRESET; the refusal is counted",
          arguments: ioDrivers, TCPIngestClient.Step.allCases)
    func refusedConnectionReset(driver: IOBackendChoice, step: TCPIngestClient.Step) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let (relay, tcp) = try self.relay([backend], driver: driver) { $0.tcpMaxConnections = 1 }
        let kept = try TCPIngestClient(to: tcp)
        try kept.write("kept:1|c\n")
        _ = try collect(from: [backend], expectedLines: 1)
        let refused = try TCPIngestClient(to: tcp)
        let result = refused.next(step, seconds: 5)
        #expect(result == -Int(ECONNRESET), "the refused client's \(step) found \(String(describing: result)), not a reset")
        try kept.write("kept.again:1|c\n")
        #expect(try collect(from: [backend], expectedLines: 1).lines[0] == ["kept.again:1|c"])
        let counters = relay.stop()
        let label = "tcp:\(tcp)"
        #expect(counters[.tcpConnectionsRefused, listener: label] == 1)
        #expect(counters[.tcpConnectionsAccepted, listener: label] == 1)
        #expect(counters[.tcpConnectionsClosedStop, listener: label] == 1, "a refused connection is not counted closed")
    }

    @Test("a connection silent for --tcp-idle-timeout is closed and counted idle; its held partial line is counted dropped", arguments: ioDrivers)
    func idleTimeout(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let (relay, tcp) = try self.relay([backend], driver: driver) { $0.tcpIdleTimeoutNanoseconds = 200_000_000 }
        let client = try TCPIngestClient(to: tcp)
        try client.write("idle.line:1|c\nidle.part")
        let received = try collect(from: [backend], expectedLines: 1)
        #expect(received.lines[0] == ["idle.line:1|c"])
        #expect(client.waitForClose(seconds: 5), "the relay closes the idle connection")
        let counters = relay.stop()
        let label = "tcp:\(tcp)"
        #expect(counters[.tcpConnectionsClosedIdle, listener: label] == 1)
        #expect(counters[.linesDroppedTCPPartial] == 1)
        #expect(counters[.tcpBytesDroppedPartial] == UInt64("idle.part".utf8.count))
    }

    @Test("a client that sends half a line and stalls (never reading) blocks no one: another client's lines all arrive; the stop counts the half line dropped", arguments: ioDrivers)
    func stalledClient(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backends = try (0..<2).map { _ in try TestBackend() }
        let (relay, tcp) = try self.relay(backends, driver: driver)
        let stalled = try TCPIngestClient(to: tcp)
        try stalled.write("stalled.metric:1|")
        let busy = try TCPIngestClient(to: tcp)
        let lines = (0..<2_000).map { "busy.\($0):\($0)|c" }
        for chunk in stride(from: 0, to: lines.count, by: 100) {
            try busy.write(lines[chunk..<chunk + 100].map { $0 + "\n" }.joined())
        }
        let received = try collect(from: backends, expectedLines: lines.count)
        #expect(received.lines.flatMap { $0 }.sorted() == lines.sorted())
        let counters = relay.stop()
        let label = "tcp:\(tcp)"
        #expect(counters[.linesDroppedTCPPartial] == 1)
        #expect(counters[.tcpBytesDroppedPartial] == UInt64("stalled.metric:1|".utf8.count))
        #expect(counters[.tcpConnectionsClosedStop, listener: label] == 2)
    }

    @Test("a stop with connections open relays their complete lines already sent and counts each partial line dropped", arguments: ioDrivers)
    func stopWithOpenConnections(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let (relay, tcp) = try self.relay([backend], driver: driver)
        let clients = try (0..<5).map { _ in try TCPIngestClient(to: tcp) }
        var expected: [String] = []
        for (index, client) in clients.enumerated() {
            let lines = (0..<50).map { "stop.\(index).\($0):1|c" }
            expected += lines
            try client.write(lines.map { $0 + "\n" }.joined() + "stop.\(index).partial:1")
        }
        #expect(waitForCounters(relay.relay) { $0[.tcpConnectionsAccepted] == 5 })
        let counters = relay.stop()
        let received = try collect(from: [backend], expectedLines: expected.count, seconds: 5)
        #expect(received.lines[0].sorted() == expected.sorted(), "every complete line relayed at the stop")
        #expect(counters[.linesDroppedTCPPartial] == 5)
        #expect(counters[.tcpBytesDroppedPartial] == UInt64((0..<5).map { "stop.\($0).partial:1".utf8.count }.reduce(0, +)))
        #expect(counters[.tcpConnectionsClosedStop, listener: "tcp:\(tcp)"] == 5)
    }

    @Test(
        "a stop whose connections still hold bytes while the TCP receive group is dry (one 64-byte buffer): with time, the drain relays every complete line, none left unread; out of time (10 ms), what is left is counted unread, every byte relayed or counted",
        arguments: ioDrivers, [UInt64(5_000_000_000), 10_000_000])
    func stopWithBytesUnread(driver: IOBackendChoice, shutdownTimeout: UInt64) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let (relay, tcp) = try self.relay([backend], driver: driver) { configuration in
            configuration.shutdownTimeoutNanoseconds = shutdownTimeout
            // io_uring: every receive but one runs out of buffers (-ENOBUFS) and waits to be armed
            // again, a piece of 64 bytes a turn; the portable driver reads through epoll.
            configuration.tcpReceiveBuffers = 1
            configuration.tcpReceiveBufferBytes = 64
        }
        let clients = try (0..<8).map { _ in try TCPIngestClient(to: tcp) }
        #expect(waitForCounters(relay.relay) { $0[.tcpConnectionsAccepted] == UInt64(clients.count) })
        var sent = 0
        var complete = 0
        for (index, client) in clients.enumerated() {
            // 16 KiB a connection, within the receive window its socket opens at once, then half
            // a line: far more than one 64-byte buffer a turn reads before the stop.
            let lines = (0..<800).map { "dry.\(index).\($0):1|c\n" }.joined()
            try client.write(lines + "dry.\(index).half:1")
            sent += lines.utf8.count + "dry.\(index).half:1".utf8.count
            complete += lines.utf8.count
        }
        for client in clients { try #require(client.waitUntilAcknowledged(seconds: 10), "the relay's kernel took every byte") }
        let counters = relay.stop()
        let label = "tcp:\(tcp)"
        #expect(counters[.tcpConnectionsClosedStop, listener: label] == UInt64(clients.count))
        let relayed = counters[.bytesReceived, listener: label]
        let unread = counters[.tcpBytesDroppedUnread]
        let partial = counters[.tcpBytesDroppedPartial]
        #expect(relayed + partial + unread == UInt64(sent), "relayed \(relayed), partial \(partial), unread \(unread) of \(sent)")
        #expect(counters[.tcpBytesDroppedTooLong] == 0)
        if shutdownTimeout > 1_000_000_000 {
            #expect(relayed == UInt64(complete), "every complete line relayed")
            #expect(unread == 0)
            #expect(counters[.linesDroppedTCPPartial] == UInt64(clients.count))
            let received = try collect(from: [backend], expectedLines: 800 * clients.count)
            #expect(received.totalLines == 800 * clients.count)
        }
    }

    @Test("a reload adds a tcp: listener (accepting in every worker, counted under its label) and removes it: no new connection is accepted, an open one still relays until it closes", arguments: ioDrivers)
    func reloadAddsAndRemoves(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let relay = try InProcessRelay(backends: [backend], driver: driver) { configuration in
            configuration.threads = 2
            let cpu = nextTestCPU()
            configuration.cpus = [cpu, cpu]
        }
        #expect(relay.relay.tcpListenAddresses.isEmpty)
        var next = relay.relay.configurationInForce
        // A port below the ephemeral range (`TestPorts`): once the listener is removed, no
        // socket of another test is given it, so a refused connect is the removal's doing.
        let port = try unusedTCPPort()
        next.tcpListeners = [SocketAddress(numericHost: "127.0.0.1", port: port)!]
        let added = try relay.relay.reload(to: next, addresses: [backend.address])
        #expect(added.workersNotApplied == 0)
        let tcp = try #require(relay.relay.tcpListenAddresses.first)
        #expect(tcp.port == port)
        // Several connections, so both workers' sockets are likely to take some.
        let clients = try (0..<8).map { _ in try TCPIngestClient(to: tcp) }
        for (index, client) in clients.enumerated() { try client.write("added.\(index):1|c\n") }
        let first = try collect(from: [backend], expectedLines: clients.count)
        #expect(first.lines[0].sorted() == (0..<clients.count).map { "added.\($0):1|c" }.sorted())
        var without = relay.relay.configurationInForce
        without.tcpListeners = []
        let removed = try relay.relay.reload(to: without, addresses: [backend.address])
        #expect(removed.workersNotApplied == 0)
        #expect(relay.relay.tcpListenAddresses.isEmpty)
        #expect(throws: Errno.self, "the removed listener accepts no new connection") { _ = try TCPIngestClient(to: tcp) }
        try clients[0].write("still.open:1|c\n")
        let later = try collect(from: [backend], expectedLines: 1)
        #expect(later.lines[0] == ["still.open:1|c"], "a connection open at the removal still relays")
        let counters = relay.stop()
        let label = "tcp:\(tcp)"
        #expect(counters[.tcpConnectionsAccepted, listener: label] == UInt64(clients.count))
        #expect(counters[.tcpConnectionsClosedStop, listener: label] == UInt64(clients.count))
    }

    @Test("UDP, TCP and Unix listeners at once (two workers): every line relayed once, each counted under its own label; the status lists all three", arguments: ioDrivers)
    func mixedListeners(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let path = temporaryUnixPath("tcpmix")
        let backends = try (0..<2).map { _ in try TestBackend() }
        let (relay, tcp) = try self.relay(backends, driver: driver) { configuration in
            configuration.threads = 2
            let cpu = nextTestCPU()
            configuration.cpus = [cpu, cpu]
            configuration.additionalListeners = [SocketAddress(unixPath: path)!]
        }
        let viaUDP = (0..<200).map { "mix.udp.\($0):1|c" }
        let viaUnix = (0..<200).map { "mix.unix.\($0):1|c" }
        let viaTCP = (0..<600).map { "mix.tcp.\($0):1|c" }
        let clients = try (0..<6).map { _ in try TCPIngestClient(to: tcp) }
        for (index, line) in viaTCP.enumerated() { try clients[index % clients.count].write(line + "\n") }
        try send(viaUDP, to: relay.address)
        try sendUnix(viaUnix, to: path)
        let received = try collect(from: backends, expectedLines: viaUDP.count + viaUnix.count + viaTCP.count)
        #expect(received.lines.flatMap { $0 }.sorted() == (viaUDP + viaUnix + viaTCP).sorted())
        #expect(relay.relay.snapshot(version: "test", startTimeUnixSeconds: 0).listeners == ["udp:\(relay.address)", "unixgram:\(path)", "tcp:\(tcp)"])
        let counters = relay.stop()
        #expect(counters[.linesReceived, listener: "udp:\(relay.address)"] == UInt64(viaUDP.count))
        #expect(counters[.linesReceived, listener: "unixgram:\(path)"] == UInt64(viaUnix.count))
        #expect(counters[.linesReceived, listener: "tcp:\(tcp)"] == UInt64(viaTCP.count))
        #expect(counters[.tcpConnectionsAccepted, listener: "tcp:\(tcp)"] == UInt64(clients.count))
    }

    @Test("a TCP port another socket holds is refused at start, naming the address", arguments: ioDrivers)
    func portHeld(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let holder = try TCPListenSocket.listening(on: SocketAddress(numericHost: "127.0.0.1", port: 0)!)
        let port = holder.localAddress.port
        let backend = try TestBackend()
        #expect {
            _ = try InProcessRelay(backends: [backend], driver: driver) { $0.tcpPort = port }
        } throws: { error in
            "\(error)".contains("bind tcp 127.0.0.1:\(port)")
        }
    }
}
