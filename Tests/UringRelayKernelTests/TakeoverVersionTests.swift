@testable import RelayKernel
import Foundation
import Glibc
import Testing
@testable import UringRelay

/// The new relay's side of the takeover versions, against an old relay played by the test: it
/// asks for the newest version, falls back one version at a time when refused with
/// `code=version`, and counts kernel drops
/// from where the old relay says it stopped (version 2) or from its own start (version 1).
@Suite("Takeover protocol versions: the new relay's side", .serialized, .timeLimit(.minutes(1)), .onOwnThread)
struct TakeoverVersionTests {
    /// The next connection to `server`, waited for at most 10 s.
    func accept(_ server: borrowing UnixStreamSocket) throws -> UnixStreamSocket {
        var entry = pollfd(fd: server.descriptor, events: Int16(POLLIN), revents: 0)
        guard Glibc.poll(&entry, 1, 10_000) == 1, let connection = try server.accept() else {
            Issue.record("the new relay did not connect")
            throw Errno(rawValue: ETIMEDOUT)
        }
        return connection
    }

    /// A listening socket of the test's on 127.0.0.1 (`SO_REUSEPORT`, 16 KiB buffer) overflowed
    /// by 2 000 datagrams nobody reads: returns it with its kernel drop counter.
    func overflowedListener() throws -> (socket: SocketBox, drops: UInt32) {
        let socket = try UDPSocket.bound(to: SocketAddress(numericHost: "127.0.0.1", port: 0)!, reusePort: true, receiveBufferBytes: 16 << 10)
        try send((0..<2_000).map { "before.\($0):1|c" }, to: socket.localAddress)
        let reading = socket.kernelDrops
        let drops = try #require(reading)
        #expect(drops > 100, "the overflow dropped \(drops)")
        return (SocketBox(socket), drops)
    }

    /// Plays the old relay on `connection` for a request in `version`: offers `listener` with
    /// `drops` (version 2), waits for `ready` and says `stopping` (version 4) and `done`.
    func handOver(_ connection: borrowing UnixStreamSocket, version: Int, listener: SocketBox, drops: [UInt32?]?) throws {
        let address = listener.socket.localAddress
        try connection.sendFrame(TakeoverMessage.offer(version: version, threads: 1, listeners: 1, pid: getpid()).encoded, timeoutMilliseconds: 2_000)
        try connection.sendFrame(
            TakeoverMessage.sockets(index: 0, address: address.description, drops: drops).encoded, passing: [listener], timeoutMilliseconds: 2_000)
        let ready = try connection.receiveFrame(timeoutMilliseconds: 10_000)
        #expect(TakeoverMessage(decoding: ready.payload) == .ready)
        if version >= TakeoverMessage.stoppingVersion {
            try connection.sendFrame(TakeoverMessage.stopping.encoded, timeoutMilliseconds: 2_000)
        }
        try connection.sendFrame(TakeoverMessage.done(received: 0, forwarded: 0, dropped: 0).encoded, timeoutMilliseconds: 2_000)
    }

    @Test("version 2: the new relay counts exactly the drops after the counter the old relay named", arguments: ioDrivers)
    func countsFromTheOffer(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let control = TakeoverTests.ControlPath()
        let server = try UnixStreamSocket.listening(at: control.path)
        let (listener, drops) = try overflowedListener()
        let port = listener.socket.localAddress.port
        let relay = try RelayProcess(
            driver: driver, ["--bind", "127.0.0.1", "--port", "\(port)", "--takeover", control.path] + TakeoverTests.oneWorker + [backend.spec])
        let connection = try accept(server)
        let request = try connection.receiveFrame(timeoutMilliseconds: 10_000)
        #expect(TakeoverMessage(decoding: request.payload) == .takeover(version: TakeoverMessage.version, threads: 1, listeners: ["127.0.0.1:\(port)"]))
        // The old relay says it counted all but the last 100 drops.
        try handOver(connection, version: TakeoverMessage.version, listener: listener, drops: [drops - 100])
        #expect(relay.waitForLog("takeover complete"), "\(relay.standardError)")
        relay.signal(SIGTERM)
        #expect(relay.waitForExit() == 0, "\(relay.standardError)")
        #expect(relay.counter("statsrelay.datagrams_dropped.kernel") == 100, "\(relay.standardError)")
    }

    @Test("an old relay speaking only version 1 refuses version 2: the new relay asks again in 1 and counts drops from its start", arguments: ioDrivers)
    func fallsBackToVersion1(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let control = TakeoverTests.ControlPath()
        let server = try UnixStreamSocket.listening(at: control.path)
        let (listener, _) = try overflowedListener()
        let port = listener.socket.localAddress.port
        let relay = try RelayProcess(
            driver: driver, ["--bind", "127.0.0.1", "--port", "\(port)", "--takeover", control.path] + TakeoverTests.oneWorker + [backend.spec])
        // Each version above 1, newest first (version 3 added TCP listeners, none here).
        for version in stride(from: TakeoverMessage.version, to: 1, by: -1) {
            let first = try accept(server)
            let request = try first.receiveFrame(timeoutMilliseconds: 10_000)
            #expect(TakeoverMessage(decoding: request.payload) == .takeover(version: version, threads: 1, listeners: ["127.0.0.1:\(port)"]))
            // What a relay of version 1 answers (ControlServer before version 2).
            try first.sendFrame(
                TakeoverMessage.refused(code: .version, reason: "protocol version \(version) asked, this relay speaks 1").encoded, timeoutMilliseconds: 2_000)
        }
        let second = try accept(server)
        let request = try second.receiveFrame(timeoutMilliseconds: 10_000)
        #expect(TakeoverMessage(decoding: request.payload) == .takeover(version: 1, threads: 1, listeners: ["127.0.0.1:\(port)"]))
        try handOver(second, version: 1, listener: listener, drops: nil)
        #expect(relay.waitForLog("takeover complete"), "\(relay.standardError)")
        relay.signal(SIGTERM)
        #expect(relay.waitForExit() == 0, "\(relay.standardError)")
        #expect(relay.counter("statsrelay.datagrams_dropped.kernel") == 0, "\(relay.standardError)")
        #expect(relay.counter("statsrelay.datagrams_received") ?? 0 > 0, "\(relay.standardError)")
    }
}
