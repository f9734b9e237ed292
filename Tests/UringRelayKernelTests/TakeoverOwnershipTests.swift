@testable import RelayKernel
import Foundation
import Glibc
import Testing
@testable import UringRelay

/// At no point of a takeover do both relays own the listening sockets (own: tear them down at
/// their stop, connecting a UDP socket to itself). The new relay owns them only once the old
/// one has said it gave them up (`stopping`, protocol version 4, or `done`); a `ready` that
/// comes too late, or an answer that never comes, leaves them to the old relay, and the new
/// relay exits 75 without touching them.
@Suite("Takeover: one owner of the sockets at a time", .serialized, .timeLimit(.minutes(2)), .onOwnThread)
struct TakeoverOwnershipTests {
    /// A new relay still running after this long has not seen that the takeover failed.
    static let exitSeconds = 20.0

    /// Stops `relay` with `SIGTERM` if it has not exited within `exitSeconds` (recorded as an
    /// issue: it carried on), and returns its exit status.
    static func exitStatus(of relay: RelayProcess, sourceLocation: SourceLocation = #_sourceLocation) -> Int32? {
        if !relay.exits(within: exitSeconds) {
            Issue.record("the new relay carried on: \(relay.standardError)", sourceLocation: sourceLocation)
            // Its stop, as an operator's, is what cut the other relay off before the fix.
            relay.signal(SIGTERM)
        }
        return relay.waitForExit(sourceLocation: sourceLocation)
    }

    @Test(
        "a ready that comes after the old relay stopped waiting: the new relay exits 75 without touching the sockets, and the old relay keeps relaying on them",
        arguments: ioDrivers)
    func lateReady(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let control = TakeoverTests.ControlPath()
        // The old relay waits 0 ms for `ready`: every successor is late, whatever its speed.
        let old = try RelayProcess(
            driver: driver, launcher: ["/usr/bin/env", "STATSRELAY_TAKEOVER_READY_TIMEOUT_MS=0"],
            TakeoverTests.arguments(port: 0, threads: twoWorkerArguments, control: control, backend: backend))
        let address = try old.listenAddress()
        #expect(old.waitForLog("control socket on \(control.path)"), "\(old.standardError)")

        let new = try RelayProcess(
            driver: driver, TakeoverTests.arguments(port: address.port, threads: twoWorkerArguments, control: control, backend: backend, takeover: true))
        #expect(Self.exitStatus(of: new) == 75, "\(new.standardError)")
        #expect(new.standardError.contains("takeover: received the running relay's listening sockets"), "\(new.standardError)")
        #expect(new.standardError.contains("io_backend=\(driver.rawValue)"), "\(new.standardError)")
        #expect(new.standardError.contains("it keeps relaying on the sockets; this relay stops without touching them and exits"), "\(new.standardError)")
        // Why, as the old relay said it (read after `ready`, or found waiting when `ready` could not be sent).
        #expect(new.standardError.contains("takeover abandoned by the running relay (no ready within 0 ms of the offer)"), "\(new.standardError)")
        #expect(old.waitForLog("takeover failed in the new relay; this one keeps running"), "\(old.standardError)")
        #expect(old.standardError.contains("no ready within 0 ms of the offer"), "\(old.standardError)")

        // Every flow (each from its own socket, so both workers' sockets get some) reaches the
        // backend through the old relay: the new relay's stop left the sockets listening.
        let lines = (0..<200).map(TakeoverTests.line)
        for line in lines { try send([line], to: address) }
        let received = try collect(from: [backend], expectedLines: lines.count)
        #expect(Set(received.lines[0]) == Set(lines), "\(received.totalLines) of \(lines.count) lines relayed after the new relay exited")
        old.signal(SIGTERM)
        #expect(old.waitForExit() == 0, "\(old.standardError)")
        #expect(old.counter("statsrelay.lines_forwarded") == UInt64(lines.count), "\(old.standardError)")
        #expect(old.counter("statsrelay.datagrams_dropped.at_exit") == 0, "\(old.standardError)")
    }

    @Test(
        "ready reaches the old relay only after the new relay gave up: stopping cannot be sent, and the old relay keeps relaying",
        arguments: ioDrivers)
    func unconfirmedReady(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let control = TakeoverTests.ControlPath()
        let old = try RelayProcess(driver: driver, TakeoverTests.arguments(port: 0, threads: TakeoverTests.oneWorker, control: control, backend: backend))
        let address = try old.listenAddress()
        #expect(old.waitForLog("control socket on \(control.path)"), "\(old.standardError)")
        // The successor, played by the test, says `ready` while the old relay is frozen and
        // gives up waiting for its answer (shuts its end) before the old relay reads it.
        do {
            let held = try TakeoverTests.takeOffer(control: control, address: address, relay: old)
            try #require(old.suspend(), "the old relay did not stop")
            try held.connection.sendFrame(TakeoverMessage.ready.encoded, timeoutMilliseconds: 2_000)
            Glibc.shutdown(held.connection.descriptor, Int32(SHUT_RDWR))
            old.signal(SIGCONT)
        }
        #expect(old.waitForLog("takeover failed in the new relay; this one keeps running"), "\(old.standardError)")
        #expect(old.standardError.contains("ready came, but stopping could not be sent back"), "\(old.standardError)")

        let lines = (0..<100).map(TakeoverTests.line)
        try send(lines, to: address)
        #expect(Set(try collect(from: [backend], expectedLines: lines.count).lines[0]) == Set(lines))
        old.signal(SIGTERM)
        #expect(old.waitForExit() == 0, "\(old.standardError)")
        #expect(old.counter("statsrelay.lines_forwarded") == UInt64(lines.count), "\(old.standardError)")
    }

    /// How the old relay, played by the test, answers the new relay's `ready`.
    enum OldRelayAnswer: String, CustomTestStringConvertible, CaseIterable {
        /// Version 4: nothing at all, the connection left open (a relay frozen or gone astray).
        case silence
        /// Version 4: the connection closed without `stopping` (a relay that stopped waiting).
        case closeWithoutStopping

        var testDescription: String { rawValue }
    }

    @Test(
        "an old relay that does not give the sockets up after ready: the new relay exits 75 and leaves them listening for it",
        arguments: ioDrivers, OldRelayAnswer.allCases)
    func oldRelayKeepsTheSockets(driver: IOBackendChoice, answer: OldRelayAnswer) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let control = TakeoverTests.ControlPath()
        // The test plays the old relay: its control socket and its listening socket.
        let server = try UnixStreamSocket.listening(at: control.path)
        let listener = try UDPSocket.bound(to: SocketAddress(numericHost: "127.0.0.1", port: 0)!, reusePort: true)
        let address = listener.localAddress
        let new = try RelayProcess(
            driver: driver, ["--bind", "127.0.0.1", "--port", "\(address.port)", "--takeover", control.path] + TakeoverTests.oneWorker + [backend.spec])
        let versionTests = TakeoverVersionTests()
        do {
            let connection = try versionTests.accept(server)
            let request = try connection.receiveFrame(timeoutMilliseconds: 10_000)
            #expect(TakeoverMessage(decoding: request.payload) == .takeover(version: TakeoverMessage.version, threads: 1, listeners: [address.description]))
            try connection.sendFrame(
                TakeoverMessage.offer(version: TakeoverMessage.version, threads: 1, listeners: 1, pid: getpid()).encoded, timeoutMilliseconds: 2_000)
            try connection.sendFrame(
                TakeoverMessage.sockets(index: 0, address: address.description, drops: [0]).encoded,
                passing: [SocketBox(try listener.duplicate())], timeoutMilliseconds: 2_000)
            let ready = try connection.receiveFrame(timeoutMilliseconds: 10_000)
            #expect(TakeoverMessage(decoding: ready.payload) == .ready, "\(new.standardError)")
            switch answer {
            case .silence:
                // The new relay ends the wait itself, and shuts the connection.
                #expect(throws: UnixStreamSocket.FrameError.closed(received: 0)) {
                    _ = try connection.receiveFrame(timeoutMilliseconds: Int32(Self.exitSeconds * 1_000))
                }
            case .closeWithoutStopping:
                break
            }
        }
        #expect(Self.exitStatus(of: new) == 75, "\(new.standardError)")
        #expect(new.standardError.contains("io_backend=\(driver.rawValue)"), "\(new.standardError)")
        let expected = "takeover: the old relay (pid \(getpid())) did not confirm that it stops (\(answer == .silence ? "no answer in time" : "connection closed"))"
        #expect(new.standardError.contains(expected), "\(new.standardError)")
        #expect(!new.standardError.contains("takeover complete"), "\(new.standardError)")

        // The socket still takes datagrams from anyone: the new relay did not connect it to itself.
        try send(["after.exit:1|c"], to: address)
        let datagram = try listener.receive(timeoutMilliseconds: 5_000)
        #expect(datagram.map { String(decoding: $0.bytes, as: UTF8.self) } == "after.exit:1|c")
    }

    /// A relay of protocol version 3 stops once it has read `ready`, and says so only with
    /// `done` after its whole stop (up to a minute): a `ready` sent well within its 30 s wait
    /// was read, so its silence or its close without `done` is no sign that it carries on.
    @Test(
        "a version 3 old relay that closes without done after a ready sent in time: the new relay owns the sockets and relays on them",
        arguments: ioDrivers)
    func version3ReadyInTime(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let control = TakeoverTests.ControlPath()
        let server = try UnixStreamSocket.listening(at: control.path)
        let listener = try UDPSocket.bound(to: SocketAddress(numericHost: "127.0.0.1", port: 0)!, reusePort: true)
        let address = listener.localAddress
        let new = try RelayProcess(
            driver: driver, ["--bind", "127.0.0.1", "--port", "\(address.port)", "--takeover", control.path] + TakeoverTests.oneWorker + [backend.spec])
        let versionTests = TakeoverVersionTests()
        for version in stride(from: TakeoverMessage.version, to: 3, by: -1) {
            let refused = try versionTests.accept(server)
            _ = try refused.receiveFrame(timeoutMilliseconds: 10_000)
            try refused.sendFrame(TakeoverMessage.refused(code: .version, reason: "protocol version \(version) asked").encoded, timeoutMilliseconds: 2_000)
        }
        do {
            let connection = try versionTests.accept(server)
            let request = try connection.receiveFrame(timeoutMilliseconds: 10_000)
            #expect(TakeoverMessage(decoding: request.payload) == .takeover(version: 3, threads: 1, listeners: [address.description]))
            try connection.sendFrame(TakeoverMessage.offer(version: 3, threads: 1, listeners: 1, pid: getpid()).encoded, timeoutMilliseconds: 2_000)
            try connection.sendFrame(
                TakeoverMessage.sockets(index: 0, address: address.description, drops: [0]).encoded,
                passing: [SocketBox(try listener.duplicate())], timeoutMilliseconds: 2_000)
            let ready = try connection.receiveFrame(timeoutMilliseconds: 10_000)
            #expect(TakeoverMessage(decoding: ready.payload) == .ready, "\(new.standardError)")
            // The test's old relay "stops" and ends without its counts.
        }
        #expect(new.waitForLog("takeover complete: the old relay gave the sockets up and ended without reporting its counts"), "\(new.standardError)")
        // The test's own copy goes, as the old relay's would: the new relay's are the socket's.
        _ = consume listener
        let lines = (0..<100).map(TakeoverTests.line)
        try send(lines, to: address)
        #expect(Set(try collect(from: [backend], expectedLines: lines.count).lines[0]) == Set(lines))
        new.signal(SIGTERM)
        #expect(new.waitForExit() == 0, "\(new.standardError)")
        #expect(new.standardError.contains("io_backend=\(driver.rawValue)"), "\(new.standardError)")
    }
}
