@testable import RelayKernel
import Foundation
import Glibc
import Testing
@testable import UringRelay

/// A Unix listener's mode (`--unix-socket-mode`, a listener's `mode`) changed by a reload: applied
/// to its socket file at once, while the file is still the relay's; otherwise the reload fails,
/// counted, naming the path.
@Suite("A reload applies a Unix listener's changed mode", .serialized, .timeLimit(.minutes(1)), .onOwnThread)
struct UnixModeReloadTests {
    /// A relay on one worker with a Unix listener at `path`, mode 0640.
    static func relay(path: String, backend: TestBackend, driver: IOBackendChoice) throws -> InProcessRelay {
        let relay = try InProcessRelay(backends: [backend], driver: driver) { configuration in
            configuration.additionalListeners = [SocketAddress(unixPath: path)!]
            configuration.unixSocketModes[path] = 0o640
        }
        #expect(relay.relay.driver == driver)
        #expect(fileMode(path) == 0o640)
        return relay
    }

    /// The inode of the file at `path`.
    static func inode(_ path: String) -> UInt64? {
        var status = stat()
        guard lstat(path, &status) == 0 else { return nil }
        return UInt64(status.st_ino)
    }

    @Test("a changed mode is set on the listener's file at the reload, the same socket relaying before and after", arguments: ioDrivers)
    func modeApplied(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let path = temporaryUnixPath("mode")
        let backend = try TestBackend()
        let relay = try Self.relay(path: path, backend: backend, driver: driver)
        let before = Self.inode(path)
        try sendUnix(["before.mode:1|c"], to: path)
        #expect(try collect(from: [backend], expectedLines: 1).lines[0] == ["before.mode:1|c"])

        var next = relay.relay.configurationInForce
        next.unixSocketModes[path] = 0o622
        let succeeded = relay.relay.reloads.succeeded
        let reloaded = try relay.relay.reload(to: next)
        #expect(reloaded.workersNotApplied == 0)
        #expect(relay.relay.reloads.succeeded == succeeded + 1)
        #expect(fileMode(path) == 0o622, "the mode applies at the reload, not at the next start")
        #expect(relay.relay.configurationInForce.unixSocketMode(for: path) == 0o622)
        #expect(Self.inode(path) == before, "the same socket file: the listener was not bound again")

        // The same socket still takes lines (a client's connected socket keeps working).
        try sendUnix(["after.mode:1|c"], to: path)
        #expect(try collect(from: [backend], expectedLines: 1).lines[0] == ["after.mode:1|c"])
        _ = relay.stop()
        #expect(!fileExists(path))
    }

    @Test("a mode change for a path no longer the relay's socket fails the reload, counted, naming the path; the other file is left alone", arguments: ioDrivers)
    func fileNotOurs(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let path = temporaryUnixPath("moved")
        let backend = try TestBackend()
        let relay = try Self.relay(path: path, backend: backend, driver: driver)
        // Another process's socket now sits at the path.
        unlink(path)
        let other = try UnixDatagramSocket.bound(to: path)
        chmod(path, 0o600)
        _ = other

        var next = relay.relay.configurationInForce
        next.unixSocketModes[path] = 0o666
        let failed = relay.relay.reloads.failed
        #expect {
            try relay.relay.reload(to: next)
        } throws: { error in
            "\(error)".contains(path) && "\(error)".contains("chmod")
        }
        #expect(relay.relay.reloads.failed == failed + 1)
        #expect(fileMode(path) == 0o600, "another's file keeps its mode")
        #expect(relay.relay.configurationInForce.unixSocketMode(for: path) == 0o640, "nothing of the failed reload is in force")
        _ = relay.stop()
        #expect(fileExists(path), "another's file is not removed at exit")
        unlink(path)
    }

    @Test("a reload whose TCP listener cannot be bound leaves nothing in force: the changed mode goes back, and an added Unix listener's file is removed", arguments: ioDrivers)
    func failedTCPListenerUndoes(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let path = temporaryUnixPath("undo")
        let added = temporaryUnixPath("added")
        let backend = try TestBackend()
        let relay = try Self.relay(path: path, backend: backend, driver: driver)
        // Another process's listener holds this port (no SO_REUSEPORT): the reload's probe fails.
        let holder = try TCPTestBackend()
        defer { holder.close() }
        var next = relay.relay.configurationInForce
        next.unixSocketModes[path] = 0o600
        next.additionalListeners.append(SocketAddress(unixPath: added)!)
        next.tcpListeners = [SocketAddress(numericHost: "127.0.0.1", port: holder.port)!]
        let failed = relay.relay.reloads.failed
        let error = try #require(throws: ConfigurationError.self) { try relay.relay.reload(to: next) }
        #expect(error.value == "tcp:127.0.0.1:\(holder.port)", "\(error)")
        #expect(relay.relay.reloads.failed == failed + 1)
        #expect(fileMode(path) == 0o640, "the failed reload's mode stayed")
        #expect(!fileExists(added), "the failed reload's Unix listener file stayed")
        #expect(relay.relay.configurationInForce.unixSocketMode(for: path) == 0o640)
        try sendUnix(["still.relayed:1|c"], to: path)
        #expect(try collect(from: [backend], expectedLines: 1).lines[0] == ["still.relayed:1|c"])
        _ = relay.stop()
    }
}
