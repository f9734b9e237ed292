@testable import RelayKernel
import Dispatch
import Foundation
import Glibc
import Testing
@testable import UringRelay

/// A fresh path for a Unix socket under the temporary directory (short: `sun_path` holds 107
/// bytes), not existing yet.
func temporaryUnixPath(_ name: String) -> String {
    let path = "\(NSTemporaryDirectory())sr-\(name)-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
    unlink(path)
    return path
}

/// The permission bits of the file at `path` (`lstat`), or `nil` when there is none.
func fileMode(_ path: String) -> UInt32? {
    var status = stat()
    guard lstat(path, &status) == 0 else { return nil }
    return UInt32(status.st_mode) & 0o7777
}

/// Whether a file (of any kind) exists at `path`.
func fileExists(_ path: String) -> Bool {
    var status = stat()
    return lstat(path, &status) == 0
}

/// Sends each datagram to the Unix datagram socket at `path` from one connected socket, waiting
/// while its queue is full.
func sendUnix(_ datagrams: [String], to path: String) throws {
    let sender = try UnixDatagramSocket.connected(to: path)
    for datagram in datagrams { try sender.send(Array(datagram.utf8)) }
}

/// Unix datagram listeners (`--unix-socket`, a `{unix: PATH}` listener): one socket every worker
/// reads, beside the UDP listeners, counted under `unixgram:PATH`; its file gets the mode asked
/// for, a stale one is replaced, a live one refused, and it is removed at exit and when a
/// reload removes the listener.
@Suite("Unix datagram listeners", .serialized, .timeLimit(.minutes(1)), .onOwnThread)
struct UnixListenerTests {
    @Test("datagrams sent to the Unix socket and to the UDP listener of one relay (two workers) are all relayed once, each counted under its own listener; the file has the default mode 0660", arguments: ioDrivers)
    func relaysBesideUDP(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let path = temporaryUnixPath("mix")
        let backends = try (0..<2).map { _ in try TestBackend() }
        let relay = try InProcessRelay(backends: backends, driver: driver) { configuration in
            configuration.threads = 2
            let cpu = nextTestCPU()
            configuration.cpus = [cpu, cpu]
            configuration.additionalListeners = [SocketAddress(unixPath: path)!]
        }
        #expect(relay.relay.driver == driver)
        #expect(fileMode(path) == 0o660)
        let viaUnix = (0..<2_000).map { "unix.\($0):1|c" }
        let viaUDP = (0..<300).map { "udp.\($0):1|c" }
        try sendUnix(viaUnix, to: path)
        try send(viaUDP, to: relay.address)
        let received = try collect(from: backends, expectedLines: viaUnix.count + viaUDP.count)
        let lines = received.lines.flatMap { $0 }
        #expect(lines.filter { $0.hasPrefix("unix.") }.sorted() == viaUnix.sorted(), "every Unix line once")
        #expect(lines.filter { $0.hasPrefix("udp.") }.sorted() == viaUDP.sorted(), "every UDP line once")
        for (index, backendLines) in received.lines.enumerated() {
            #expect(backendLines.allSatisfy { expectedBackend(of: $0, backends: 2) == index }, "backend \(index)")
        }
        let counters = relay.stop()
        #expect(counters[.datagramsReceived, listener: "unixgram:\(path)"] == UInt64(viaUnix.count))
        #expect(counters[.datagramsReceived, listener: "udp:\(relay.address)"] == UInt64(viaUDP.count))
        #expect(counters.listeners.contains("unixgram:\(path)"))
        #expect(!fileExists(path), "the socket file is removed at exit")
    }

    @Test("--unix-socket-mode sets the file's permission bits", arguments: ioDrivers)
    func mode(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let path = temporaryUnixPath("mode")
        let backend = try TestBackend()
        let relay = try InProcessRelay(backends: [backend], driver: driver) { configuration in
            configuration.additionalListeners = [SocketAddress(unixPath: path)!]
            configuration.unixSocketModes[path] = 0o602
        }
        #expect(fileMode(path) == 0o602)
        try sendUnix(["moded:1|c"], to: path)
        #expect(try collect(from: [backend], expectedLines: 1).lines[0] == ["moded:1|c"])
        _ = relay.stop()
        #expect(!fileExists(path))
    }

    @Test("a socket file left by a process that died is replaced, and the relay receives on the new one", arguments: ioDrivers)
    func staleFileReplaced(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let path = temporaryUnixPath("stale")
        // Bound and closed: the file stays, with nobody behind it.
        _ = try UnixDatagramSocket.bound(to: path)
        #expect(fileExists(path))
        #expect(throws: Errno.self) { try sendUnix(["nobody:1|c"], to: path) }
        let backend = try TestBackend()
        let relay = try InProcessRelay(backends: [backend], driver: driver) { configuration in
            configuration.additionalListeners = [SocketAddress(unixPath: path)!]
        }
        try sendUnix(["after.stale:1|c"], to: path)
        #expect(try collect(from: [backend], expectedLines: 1).lines[0] == ["after.stale:1|c"])
        _ = relay.stop()
        #expect(!fileExists(path))
    }

    @Test("a path where a live socket receives is refused (bind unix, errno 98, the path named) and left alone; so is a file that is not a socket", arguments: ioDrivers)
    func livePathRefused(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let path = temporaryUnixPath("live")
        let live = try UnixDatagramSocket.bound(to: path)
        let backend = try TestBackend()
        var configuration = RelayConfiguration(backends: [try BackendAddress(parsing: backend.spec)])
        configuration.bindHost = "127.0.0.1"
        configuration.port = 0
        configuration.threads = 1
        configuration.cpus = [nextTestCPU()]
        configuration.ioBackend = driver
        configuration.additionalListeners = [SocketAddress(unixPath: path)!]
        let relay = try Relay(configuration: configuration, logger: .init(label: "test"))
        do {
            _ = try relay.start()
            Issue.record("the relay started on a path a live socket holds")
        } catch let error as SystemCallError {
            #expect(error.operation == "bind unix")
            #expect(error.target == path)
            #expect(error.errno.rawValue == EADDRINUSE)
            #expect(error.hint?.contains("a running process") == true, "\(error)")
        }
        // The live socket still has its file and receives.
        try sendUnix(["still.live:1|c"], to: path)
        #expect(try live.receive(timeoutMilliseconds: 5_000).map { String(decoding: $0, as: UTF8.self) } == "still.live:1|c")

        let plain = temporaryUnixPath("plain")
        #expect(FileManager.default.createFile(atPath: plain, contents: Data("keep".utf8)))
        configuration.additionalListeners = [SocketAddress(unixPath: plain)!]
        let second = try Relay(configuration: configuration, logger: .init(label: "test"))
        #expect(throws: SystemCallError.self) { _ = try second.start() }
        #expect(FileManager.default.contents(atPath: plain) == Data("keep".utf8), "a file that is not a socket is left as it was")
        unlink(plain)
        unlink(path)
    }

    @Test("a reload adds a Unix listener (receiving in every worker, its file made) and removes it again (its file removed, sends refused), the UDP listener relaying throughout", arguments: ioDrivers)
    func reloadAddRemove(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let path = temporaryUnixPath("reload")
        let backend = try TestBackend()
        let relay = try InProcessRelay(backends: [backend], driver: driver) { configuration in
            configuration.threads = 2
            let cpu = nextTestCPU()
            configuration.cpus = [cpu, cpu]
        }
        var next = relay.relay.configurationInForce
        next.additionalListeners = [SocketAddress(unixPath: path)!]
        next.unixSocketModes[path] = 0o640
        let added = try relay.relay.reload(to: next)
        #expect(added.applied.map(\.key) == ["listeners"])
        #expect(added.workersNotApplied == 0)
        #expect(fileMode(path) == 0o640)
        #expect(relay.relay.listenAddresses == [relay.address, SocketAddress(unixPath: path)!])
        let lines = (0..<500).map { "added.\($0):1|c" }
        try sendUnix(lines, to: path)
        let received = try collect(from: [backend], expectedLines: lines.count)
        #expect(received.lines[0].sorted() == lines.sorted())

        var back = relay.relay.configurationInForce
        back.additionalListeners = []
        let removed = try relay.relay.reload(to: back)
        #expect(removed.workersNotApplied == 0)
        #expect(!fileExists(path), "a removed listener's file goes")
        #expect(throws: Errno.self) { try sendUnix(["gone:1|c"], to: path) }
        try send(["udp.after:1|c"], to: relay.address)
        #expect(try collect(from: [backend], expectedLines: 1).lines[0] == ["udp.after:1|c"])
        let counters = relay.stop()
        #expect(counters[.datagramsReceived, listener: "unixgram:\(path)"] == UInt64(lines.count))
    }
}
