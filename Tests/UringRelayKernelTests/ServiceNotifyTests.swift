@testable import RelayKernel
import Foundation
import Glibc
import Testing
@testable import UringRelay

@Suite("sd_notify (Type=notify)", .serialized, .timeLimit(.minutes(1)), .onOwnThread)
struct ServiceNotifyTests {
    /// A socket path of this test's own under the temporary directory.
    static func socketPath(_ name: String) -> String {
        "\(NSTemporaryDirectory())statsrelay-\(getpid())-\(name)-\(UInt32.random(in: 0...UInt32.max)).sock"
    }

    /// The next notification on `socket` as its `KEY=VALUE` lines, waiting at most 10 s.
    static func next(_ socket: borrowing UnixDatagramSocket) throws -> [String: String]? {
        guard let bytes = try socket.receive(timeoutMilliseconds: 10_000) else { return nil }
        var fields: [String: String] = [:]
        for line in String(decoding: bytes, as: UTF8.self).split(separator: "\n") {
            let parts = line.split(separator: "=", maxSplits: 1)
            fields[String(parts[0])] = parts.count > 1 ? String(parts[1]) : ""
        }
        return fields
    }

    @Test("READY=1 once listening, RELOADING=1 with MONOTONIC_USEC then READY=1 with the status in force around a SIGHUP reload, STOPPING=1 at stop",
          arguments: ioDrivers)
    func lifecycle(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let path = Self.socketPath("notify")
        let socket = try UnixDatagramSocket.bound(to: path)
        defer { unlink(path) }
        let backend = try TestBackend()
        let config = Self.socketPath("config") + ".yaml"
        try "bind: 127.0.0.1\nport: 0\nthreads: 1\nbackends: [\"\(backend.spec)\"]\n".write(toFile: config, atomically: true, encoding: .utf8)
        defer { unlink(config) }
        let relay = try RelayProcess(driver: driver, launcher: ["/usr/bin/env", "NOTIFY_SOCKET=\(path)"], ["--config", config])

        let ready = try #require(try Self.next(socket), "no READY=1: \(relay.standardError)")
        #expect(ready["READY"] == "1")
        // Ready only once it listens: the port READY's status names takes a line at once (the
        // log, read through a pipe by another thread, may not have it yet).
        let status = try #require(ready["STATUS"])
        #expect(status.hasPrefix("relaying udp:127.0.0.1:"))
        let port = try #require(status.split(separator: " ").dropFirst(1).first?.split(separator: ":").last.flatMap { UInt16($0) })
        let listen = SocketAddress(numericHost: "127.0.0.1", port: port)!
        try send(["at.ready:1|c"], to: listen)
        #expect(try collect(from: [backend], expectedLines: 1).lines[0] == ["at.ready:1|c"])
        #expect(try relay.listenAddress() == listen)

        // The reload adds a backend: READY's status after it says so.
        let second = try TestBackend()
        try "bind: 127.0.0.1\nport: 0\nthreads: 1\nbackends: [\"\(backend.spec)\", \"\(second.spec)\"]\n"
            .write(toFile: config, atomically: true, encoding: .utf8)
        let before = MonotonicClock.nanoseconds() / 1_000
        relay.signal(SIGHUP)
        let reloading = try #require(try Self.next(socket))
        let after = MonotonicClock.nanoseconds() / 1_000
        #expect(reloading["RELOADING"] == "1")
        let stamp = try #require(reloading["MONOTONIC_USEC"].flatMap { UInt64($0) })
        #expect(stamp >= before && stamp <= after, "MONOTONIC_USEC \(stamp) outside [\(before), \(after)]")
        let reloaded = try #require(try Self.next(socket))
        #expect(reloaded["READY"] == "1")
        #expect(reloaded["STATUS"] == "relaying udp:\(listen) to 2 backends", "the status in force after the reload")
        // The log comes through a pipe another thread reads: it may lag the notification.
        #expect(relay.waitForLog("configuration reloaded"))

        // Still relaying after the reload.
        try send(["after.reload:1|c"], to: listen)
        #expect(try collect(from: [backend, second], expectedLines: 1).lines.flatMap { $0 } == ["after.reload:1|c"])

        relay.signal(SIGTERM)
        let stopping = try #require(try Self.next(socket))
        #expect(stopping["STOPPING"] == "1")
        #expect(stopping["STATUS"]?.contains("SIGTERM") == true)
        #expect(relay.waitForExit(seconds: 15) == 0)
        #expect(try socket.receive(timeoutMilliseconds: 0) == nil, "a notification after STOPPING=1")
    }

    @Test("READY=1's status names each listener by its label: a UDP one, a Unix datagram one and a TCP one", arguments: ioDrivers)
    func statusNamesUnixListener(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let path = Self.socketPath("notify-unix")
        let socket = try UnixDatagramSocket.bound(to: path)
        defer { unlink(path) }
        let unixPath = temporaryUnixPath("status")
        let backend = try TestBackend()
        let tcpPort = try unusedTCPPort()
        let relay = try RelayProcess(driver: driver, launcher: ["/usr/bin/env", "NOTIFY_SOCKET=\(path)"], [
            "--bind", "127.0.0.1", "--port", "0", "--threads", "1", "--unix-socket", unixPath, "--tcp-port", "\(tcpPort)",
            backend.spec])
        let ready = try #require(try Self.next(socket), "no READY=1: \(relay.standardError)")
        #expect(ready["READY"] == "1")
        let listen = SocketAddress(numericHost: "127.0.0.1", port: try UnixListenerCommandTests.udpPort(of: relay))!
        #expect(ready["STATUS"] == "relaying udp:\(listen) unixgram:\(unixPath) tcp:127.0.0.1:\(tcpPort) to 1 backends")
        // The Unix listener the status names takes lines.
        try sendUnix(["named.unix:1|c"], to: unixPath)
        #expect(try collect(from: [backend], expectedLines: 1).lines[0] == ["named.unix:1|c"])
        relay.signal(SIGTERM)
        #expect(relay.waitForExit(seconds: 15) == 0)
    }

    @Test("without NOTIFY_SOCKET nothing is sent and the relay runs as before", arguments: ioDrivers)
    func withoutSocket(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let relay = try RelayProcess(
            driver: driver, launcher: ["/usr/bin/env", "-u", "NOTIFY_SOCKET"], ["--bind", "127.0.0.1", "--port", "0", "--threads", "1", backend.spec])
        let listen = try relay.listenAddress()
        try send(["plain:1|c"], to: listen)
        #expect(try collect(from: [backend], expectedLines: 1).totalLines == 1)
        relay.signal(SIGTERM)
        #expect(relay.waitForExit(seconds: 15) == 0)
        #expect(!relay.standardError.contains("sd_notify"))
    }

    @Test("a socket in the abstract namespace (@name) receives what is sent to it; a path too long is refused with ENAMETOOLONG")
    func abstractNamespace() throws {
        let name = "@statsrelay-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let receiver = try UnixDatagramSocket.bound(to: name)
        let sender = try UnixDatagramSocket.unbound()
        try sender.send(Array("READY=1\n".utf8), to: name)
        #expect(try receiver.receive(timeoutMilliseconds: 1_000) == Array("READY=1\n".utf8))
        #expect(throws: Errno(rawValue: ENAMETOOLONG)) { try sender.send([1], to: "/" + String(repeating: "x", count: 200)) }
    }
}
