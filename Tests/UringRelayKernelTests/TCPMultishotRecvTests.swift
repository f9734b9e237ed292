import Dispatch
import Foundation
import Glibc
@testable import RelayKernel
import Testing
@testable import UringRelay

/// The lines `count` numbered lines of connection `connection` (`recv.C.N:N|c`), each `\n`-ended.
private func numberedLines(connection: Int, count: Int, pad: Int = 0) -> [String] {
    (0..<count).map { "recv.\(connection).\(String(repeating: "x", count: (pad * $0) % 37)).\($0):\($0)|c" }
}

/// Whether, in `lines` (as a backend received them), each connection's lines (`recv.C.…`)
/// came in the order it sent them (`.N:` ascending).
private func inOrderPerConnection(_ lines: [String]) -> Bool {
    var last: [String: Int] = [:]
    for line in lines {
        let fields = line.split(separator: ":")[0].split(separator: ".")
        guard fields.count >= 3, let number = Int(fields[fields.count - 1]) else { return false }
        let connection = String(fields[1])
        if let previous = last[connection], previous >= number { return false }
        last[connection] = number
    }
    return true
}

/// Writes all of `text` to a connected socket (blocking); the error, if one stopped it.
private func writeAll(_ text: String, to descriptor: Int32) -> Errno? {
    let bytes = Array(text.utf8)
    var sent = 0
    while sent < bytes.count {
        let result = bytes[sent...].withUnsafeBytes { Glibc.send(descriptor, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        if result < 0 {
            if errno == EINTR { continue }
            return Errno(rawValue: errno)
        }
        sent += result
    }
    return nil
}

/// Skips an io_uring case where the kernel has no receive bundles (Linux 6.10+).
private func requireBundles(_ driver: IOBackendChoice) throws {
    if driver == .uring && !KernelSupport.receiveBundlesAvailable {
        try Test.cancel("receive bundles unavailable: kernel \(KernelSupport.release) lacks IORING_FEAT_RECVSEND_BUNDLE")
    }
}

/// TCP ingest's reads on the io_uring driver: a multishot `recv` per connection into a buffer
/// group of its own, with receive bundles where the kernel has them; the portable driver reads
/// through epoll. The observable that tells them apart: `tcp_receive_completions` and
/// `tcp_receive_buffers` count the receive CQEs and the buffers they filled, and stay 0 on
/// the portable driver (and on io_uring reading through epoll).
@Suite("TCP multishot receive", .serialized, .timeLimit(.minutes(1)), .onOwnThread)
struct TCPMultishotRecvTests {
    /// A relay on `driver` with a TCP listener on 127.0.0.1 (port chosen by the kernel).
    private func relay(
        _ backends: [TestBackend], driver: IOBackendChoice, configure: (inout RelayConfiguration) -> Void = { _ in }
    ) throws -> (InProcessRelay, SocketAddress) {
        let relay = try InProcessRelay(backends: backends, driver: driver) { configuration in
            configuration.tcpPort = 0
            configure(&configuration)
        }
        return (relay, try #require(relay.relay.tcpListenAddresses.first))
    }

    @Test("reads come by receive completions on io_uring (counted, each filling at least one buffer), through epoll on the portable driver (none counted); every line once", arguments: ioDrivers)
    func readsByCompletions(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let (relay, tcp) = try self.relay([backend], driver: driver)
        let client = try TCPIngestClient(to: tcp)
        let lines = numberedLines(connection: 0, count: 300)
        for chunk in stride(from: 0, to: lines.count, by: 30) {
            try client.write(lines[chunk..<chunk + 30].map { $0 + "\n" }.joined())
        }
        let received = try collect(from: [backend], expectedLines: lines.count)
        #expect(received.lines[0] == lines, "every line once, in order")
        let counters = relay.stop()
        if driver == .uring {
            #expect(counters[.tcpReceiveCompletions] > 0, "the bytes came in receive CQEs")
            #expect(counters[.tcpReceiveBuffers] >= counters[.tcpReceiveCompletions])
        } else {
            #expect(counters[.tcpReceiveCompletions] == 0)
            #expect(counters[.tcpReceiveBuffers] == 0)
        }
        #expect(counters[.tcpBufferRingExhausted] == 0)
    }

    @Test("io_uring told to read TCP through epoll (STATSRELAY_TCP_RECEIVE=epoll's setting) counts no receive completion and relays the same", arguments: ioDrivers)
    func epollSwitch(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let (relay, tcp) = try self.relay([backend], driver: driver) { $0.tcpReceive = .epoll }
        let client = try TCPIngestClient(to: tcp)
        let lines = numberedLines(connection: 0, count: 100)
        try client.write(lines.map { $0 + "\n" }.joined())
        #expect(try collect(from: [backend], expectedLines: lines.count).lines[0] == lines)
        let counters = relay.stop()
        #expect(counters[.tcpReceiveCompletions] == 0, "read with recv(2), not by completions")
    }

    @Test("a tiny TCP buffer group (4 buffers of 64 bytes) under 60 connections sending at once: the group runs dry (counted on io_uring), receives are armed again, and every line arrives exactly once, in order per connection", arguments: ioDrivers)
    func tinyGroupBurst(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let (relay, tcp) = try self.relay([backend], driver: driver) { configuration in
            configuration.tcpReceiveBuffers = 4
            configuration.tcpReceiveBufferBytes = 64
        }
        let count = 60
        let clients = try (0..<count).map { _ in try TCPIngestClient(to: tcp) }
        let label = "tcp:\(tcp)"
        #expect(waitForCounters(relay.relay) { $0[.tcpConnectionsAccepted, listener: label] == UInt64(count) }, "all accepted (and armed) first")
        var expected: [String] = []
        for (index, client) in clients.enumerated() {
            let lines = numberedLines(connection: index, count: 40, pad: 3)
            expected += lines
            try client.write(lines.map { $0 + "\n" }.joined())
        }
        let received = try collect(from: [backend], expectedLines: expected.count, seconds: 20)
        #expect(received.lines[0].count == expected.count)
        #expect(received.lines[0].sorted() == expected.sorted(), "every line exactly once")
        #expect(inOrderPerConnection(received.lines[0]), "each connection's lines in the order sent")
        for client in clients { client.finish() }
        #expect(waitForCounters(relay.relay) { $0[.tcpConnectionsClosedPeer, listener: label] == UInt64(count) }, "each close read")
        let counters = relay.stop()
        if driver == .uring {
            #expect(counters[.tcpBufferRingExhausted] > 0, "4 buffers for 60 senders: the group ran dry")
            #expect(counters[.tcpReceiveBuffers] >= UInt64(expected.joined(separator: "\n").utf8.count / 64), "64-byte buffers carried it all")
        } else {
            #expect(counters[.tcpBufferRingExhausted] == 0)
        }
        #expect(counters[.linesReceived, listener: label] == UInt64(expected.count))
        #expect(counters[.linesDroppedTCPPartial] == 0)
    }

    @Test("lines cut across buffers and across receive bundles (8 buffers of 16 bytes, the ring wrapping many times): every line whole, once, in order; a bundle filled several buffers", arguments: ioDrivers)
    func cutAcrossBundles(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        try requireBundles(driver)
        let backend = try TestBackend()
        let (relay, tcp) = try self.relay([backend], driver: driver) { configuration in
            configuration.tcpReceiveBuffers = 8
            configuration.tcpReceiveBufferBytes = 16
            configuration.tcpReceive = .auto
        }
        let client = try TCPIngestClient(to: tcp)
        // Lines of 14 to 50 bytes: each crosses one or more 16-byte buffer boundaries at a
        // different offset; written in pieces of 1 to 113 bytes, so bundles of every size form.
        let lines = numberedLines(connection: 0, count: 400, pad: 7)
        let bytes = Array(lines.map { $0 + "\n" }.joined().utf8)
        var offset = 0
        var size = 1
        while offset < bytes.count {
            let end = min(bytes.count, offset + size)
            try client.write(String(decoding: bytes[offset..<end], as: UTF8.self))
            offset = end
            size = size % 113 + 1
        }
        let received = try collect(from: [backend], expectedLines: lines.count)
        #expect(received.lines[0] == lines, "every line whole, once, in order")
        let counters = relay.stop()
        if driver == .uring {
            #expect(counters[.tcpReceiveBuffers] > counters[.tcpReceiveCompletions], "some completion was a bundle of several buffers")
            #expect(counters[.tcpReceiveBuffers] >= UInt64((bytes.count + 15) / 16), "16-byte buffers carried it all")
        } else {
            #expect(counters[.tcpReceiveCompletions] == 0)
        }
        #expect(counters[.linesDroppedTCPPartial] == 0)
    }

    @Test("plain multishot receive (bundles off): one buffer per completion, lines cut across buffers arrive whole and in order", arguments: ioDrivers)
    func plainMultishot(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let (relay, tcp) = try self.relay([backend], driver: driver) { configuration in
            configuration.tcpReceiveBuffers = 8
            configuration.tcpReceiveBufferBytes = 16
            configuration.tcpReceive = .multishot
        }
        let client = try TCPIngestClient(to: tcp)
        let lines = numberedLines(connection: 0, count: 200, pad: 5)
        for chunk in stride(from: 0, to: lines.count, by: 20) {
            try client.write(lines[chunk..<chunk + 20].map { $0 + "\n" }.joined())
        }
        let received = try collect(from: [backend], expectedLines: lines.count)
        #expect(received.lines[0] == lines)
        let counters = relay.stop()
        if driver == .uring {
            #expect(counters[.tcpReceiveCompletions] > 0)
            #expect(counters[.tcpReceiveBuffers] == counters[.tcpReceiveCompletions], "one buffer per completion without bundles")
        } else {
            #expect(counters[.tcpReceiveCompletions] == 0)
        }
    }

    @Test("a core short of send slots (--packet-len 64, --max-datagram 512) while 4 clients send 160 KB flat out: nothing lost or repeated, each connection's lines in order", arguments: ioDrivers)
    func coreWithoutRoom(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let (relay, tcp) = try self.relay([backend], driver: driver) { configuration in
            // 1 024 send slots of 64 bytes, 31 of them each datagram's reserve, each held until
            // its packet's confirmation window passes: the core refuses input after some 60 KB,
            // far less than the clients send and the 1 MiB the group holds (parking was seen
            // to happen here, instrumented once, on both paths of `relayReceived`).
            configuration.packetBytes = 64
            configuration.maxDatagramBytes = 512
        }
        let senders = 4
        let perSender = 2_000
        let clients = try (0..<senders).map { _ in try TCPIngestClient(to: tcp) }
        let group = DispatchGroup()
        let failures = LockedText()
        for (index, client) in clients.enumerated() {
            let text = numberedLines(connection: index, count: perSender).map { $0 + "\n" }.joined()
            let descriptor = client.descriptor
            DispatchQueue.global().async(group: group) {
                if let error = writeAll(text, to: descriptor) { failures.withLock { $0 += "\(error) " } }
            }
        }
        let expected = (0..<senders).flatMap { numberedLines(connection: $0, count: perSender) }
        let received = try collect(from: [backend], expectedLines: expected.count, seconds: 30)
        #expect(group.wait(timeout: .now() + 10) == .success, "every sender finished")
        #expect(failures.withLock { $0 }.isEmpty)
        #expect(received.lines[0].count == expected.count)
        #expect(received.lines[0].sorted() == expected.sorted(), "nothing lost or repeated")
        #expect(inOrderPerConnection(received.lines[0]), "each connection's lines in order")
        let counters = relay.stop()
        #expect(counters[.linesReceived, listener: "tcp:\(tcp)"] == UInt64(expected.count))
    }

    @Test("a peer's reset while its receive is armed: counted a peer close, its lines before relayed, the connection gone", arguments: ioDrivers)
    func peerReset(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let (relay, tcp) = try self.relay([backend], driver: driver)
        let label = "tcp:\(tcp)"
        let client = try TCPIngestClient(to: tcp)
        let other = try TCPIngestClient(to: tcp)
        try client.write("reset.before:1|c\n")
        #expect(try collect(from: [backend], expectedLines: 1).lines[0] == ["reset.before:1|c"])
        // SO_LINGER 0: close(2) sends a reset.
        var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
        setsockopt(client.descriptor, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
        shutdown(client.descriptor, Int32(SHUT_RDWR))
        #expect(waitForCounters(relay.relay) { $0[.tcpConnectionsClosedPeer, listener: label] == 1 }, "the reset is read as a peer's close")
        try other.write("other.after:1|c\n")
        #expect(try collect(from: [backend], expectedLines: 1).lines[0] == ["other.after:1|c"], "the other connection still read")
        let counters = relay.stop()
        #expect(counters[.tcpConnectionsClosedPeer, listener: label] == 1)
        #expect(counters[.tcpConnectionsClosedStop, listener: label] == 1)
        #expect(counters[.tcpConnectionsClosedError, listener: label] == 0)
    }

    @Test("a stop with 30 connections open, each armed and holding half a line: the stop ends, each closes counted stop, each half line counted received and dropped, the complete lines relayed", arguments: ioDrivers)
    func stopWithArmedReceives(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let (relay, tcp) = try self.relay([backend], driver: driver)
        let label = "tcp:\(tcp)"
        let count = 30
        let clients = try (0..<count).map { _ in try TCPIngestClient(to: tcp) }
        for (index, client) in clients.enumerated() { try client.write("stop.\(index):1|c\nstop.half.\(index)") }
        let received = try collect(from: [backend], expectedLines: count)
        #expect(received.lines[0].sorted() == (0..<count).map { "stop.\($0):1|c" }.sorted(), "each complete line relayed once, whole")
        let counters = relay.stop()
        #expect(counters[.tcpConnectionsAccepted, listener: label] == UInt64(count))
        #expect(counters[.tcpConnectionsClosedStop, listener: label] == UInt64(count))
        let otherCloses: [ListenerCounter] = [.tcpConnectionsClosedPeer, .tcpConnectionsClosedIdle, .tcpConnectionsClosedTooLong, .tcpConnectionsClosedError]
        #expect(otherCloses.map { counters[$0, listener: label] } == [0, 0, 0, 0], "closed for no other reason (peer, idle, too long, error)")
        #expect(counters[.linesDroppedTCPPartial] == UInt64(count))
        #expect(counters[.tcpBytesDroppedPartial] == UInt64((0..<count).map { "stop.half.\($0)".utf8.count }.reduce(0, +)))
        #expect(counters[.linesReceived, listener: label] == UInt64(2 * count), "each complete line and each half line received")
        #expect(counters[.linesReceived] == counters[.linesForwarded] + counters[.linesDroppedTCPPartial], "lines received = forwarded + dropped")
        for client in clients { #expect(client.waitForClose(seconds: 5), "the relay closed it") }
    }

    @Test("a reload removes the tcp: listener while a connection's receive is armed: that connection still relays until its client closes it", arguments: ioDrivers)
    func listenerRemovedWhileArmed(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let (relay, tcp) = try self.relay([backend], driver: driver)
        let label = "tcp:\(tcp)"
        let client = try TCPIngestClient(to: tcp)
        try client.write("removal.before:1|c\n")
        #expect(try collect(from: [backend], expectedLines: 1).lines[0] == ["removal.before:1|c"])
        var without = relay.relay.configurationInForce
        without.tcpPort = nil
        without.tcpListeners = []
        #expect(try relay.relay.reload(to: without, addresses: [backend.address]).workersNotApplied == 0)
        try client.write("removal.after:1|c\n")
        #expect(try collect(from: [backend], expectedLines: 1).lines[0] == ["removal.after:1|c"], "still read after the removal")
        client.finish()
        #expect(waitForCounters(relay.relay) { $0[.tcpConnectionsClosedPeer, listener: label] == 1 })
        let counters = relay.stop()
        #expect(counters[.linesReceived, listener: label] == 2)
    }
}
