@testable import RelayKernel
import Foundation
import Glibc
import Testing
@testable import UringRelay

/// `statsrelay run --unix-socket PATH`: the file and its mode, removal at exit, a live path
/// refused with the port-held exit status, and a takeover that hands the socket (and leaves its
/// file) to the next relay.
@Suite("The executable's Unix datagram listener", .serialized, .timeLimit(.minutes(1)), .onOwnThread)
struct UnixListenerCommandTests {
    /// The UDP port of the first listener in the `listening on ADDR:PORT, unix:PATH` line.
    static func udpPort(of relay: RelayProcess) throws -> UInt16 {
        #expect(relay.waitForLog("listening on "), "relay did not start: \(relay.standardError)")
        let line = try #require(relay.logLine(containing: "listening on "))
        let spec = try #require(line.split(separator: "listening on ").last?.split(separator: ",").first)
        return try #require(spec.split(separator: ":").last.flatMap { UInt16($0.prefix { $0.isNumber }) })
    }

    @Test("--unix-socket with --unix-socket-mode 0620: the file has that mode, lines sent to it are relayed and counted, and SIGTERM removes the file (exit 0)", arguments: ioDrivers)
    func runAndExit(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let path = temporaryUnixPath("cmd")
        let backend = try TestBackend()
        let relay = try RelayProcess(driver: driver, [
            "--bind", "127.0.0.1", "--port", "0", "--threads", "1", "--cpus", "\(nextTestCPU())",
            "--unix-socket", path, "--unix-socket-mode", "0620", backend.spec])
        _ = try Self.udpPort(of: relay)
        #expect(relay.standardError.contains("unix:\(path)"), "the start-up line names the Unix listener")
        #expect(fileMode(path) == 0o620)
        let lines = (0..<200).map { "cmd.\($0):1|c" }
        try sendUnix(lines, to: path)
        #expect(try collect(from: [backend], expectedLines: lines.count).lines[0].sorted() == lines.sorted())
        relay.signal(SIGTERM)
        #expect(relay.waitForExit() == 0, "\(relay.standardError)")
        #expect(!fileExists(path), "the file is removed at exit")
        #expect(relay.counter("statsrelay.lines_received") == UInt64(lines.count))
    }

    @Test("a second relay on the path of a running one exits 71 naming the path; the first keeps its file and relays on", arguments: ioDrivers)
    func secondRelayRefused(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let path = temporaryUnixPath("held")
        let backend = try TestBackend()
        let first = try RelayProcess(driver: driver, [
            "--bind", "127.0.0.1", "--port", "0", "--threads", "1", "--cpus", "\(nextTestCPU())", "--unix-socket", path, backend.spec])
        _ = try Self.udpPort(of: first)
        let second = try RelayProcess.run([
            "--io-backend", driver.rawValue, "--bind", "127.0.0.1", "--port", "0", "--threads", "1", "--unix-socket", path, backend.spec])
        #expect(second.status == 71)
        #expect(second.error.contains("bind unix \(path): Address already in use (errno 98)"), "\(second.error)")
        try sendUnix(["first.still:1|c"], to: path)
        #expect(try collect(from: [backend], expectedLines: 1).lines[0] == ["first.still:1|c"])
        first.signal(SIGTERM)
        #expect(first.waitForExit() == 0)
        #expect(!fileExists(path))
    }

    @Test("--control-socket at a --unix-socket listener's path exits 64 naming both, before anything is bound")
    func controlSocketAtListenerPath() throws {
        let path = temporaryUnixPath("both")
        let backend = try TestBackend()
        let result = try RelayProcess.run(["--port", "0", "--unix-socket", path, "--control-socket", path, backend.spec])
        #expect(result.status == 64)
        #expect(result.error.contains("invalid --control-socket '\(path)': the path of listeners[1], a unixgram listener: give the control socket a path of its own"), "\(result.error)")
        #expect(!fileExists(path), "nothing was bound")
    }

    @Test("a control socket whose path holds a live datagram socket (another process's listener) is refused, and that socket keeps its file and its datagrams")
    func controlSocketAtLiveDatagramSocket() throws {
        let path = temporaryUnixPath("live")
        let live = try UDPSocket.listening(unixPath: path, mode: 0o600)
        defer { unlink(path) }
        let error = try #require(throws: SystemCallError.self) { _ = try UnixStreamSocket.listening(at: path) }
        #expect(error.errno.rawValue == EADDRINUSE)
        #expect(error.hint?.contains("a live datagram socket is bound there") == true, "\(error)")
        #expect(fileExists(path), "the live socket's file was removed")
        try sendUnix(["still.here:1|c"], to: path)
        var buffer = [UInt8](repeating: 0, count: 64)
        let received = buffer.withUnsafeMutableBytes { Glibc.recv(live.descriptor, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
        #expect(received == "still.here:1|c".utf8.count, "the live socket no longer receives at its path")
    }

    @Test("a bad --unix-socket-mode or path exits 64 naming the flag")
    func badFlags() throws {
        let backend = try TestBackend()
        let badMode = try RelayProcess.run(["--port", "0", "--unix-socket", temporaryUnixPath("bad"), "--unix-socket-mode", "0999", backend.spec])
        #expect(badMode.status == 64)
        #expect(badMode.error.contains("--unix-socket-mode"), "\(badMode.error)")
        let longPath = "/tmp/" + String(repeating: "x", count: 120)
        let badPath = try RelayProcess.run(["--port", "0", "--unix-socket", longPath, backend.spec])
        #expect(badPath.status == 64)
        #expect(badPath.error.contains("--unix-socket"), "\(badPath.error)")
    }

    @Test("a takeover hands the Unix socket over: the old relay exits without removing the file, the new one receives on it with its own --unix-socket-mode, and removes it at its own exit", arguments: ioDrivers)
    func takeover(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let path = temporaryUnixPath("take")
        let control = TakeoverTests.ControlPath()
        let backend = try TestBackend()
        // Each with its own mode: the new relay's applies to the file it takes over.
        func arguments(port: UInt16, takeover: Bool) -> [String] {
            ["--bind", "127.0.0.1", "--port", "\(port)", "--unix-socket", path, "--unix-socket-mode", takeover ? "0660" : "0620",
             "--control-socket", control.path] + twoWorkerArguments + (takeover ? ["--takeover", control.path] : []) + [backend.spec]
        }
        let old = try RelayProcess(driver: driver, arguments(port: 0, takeover: false))
        let port = try Self.udpPort(of: old)
        #expect(old.waitForLog("control socket on \(control.path)"), "\(old.standardError)")
        let file = UnixListenerFile.current(at: path)
        #expect(file != nil)
        #expect(fileMode(path) == 0o620)
        let sender = try UnixDatagramSocket.connected(to: path)
        let before = (0..<300).map { "before.\($0):1|c" }
        for line in before { try sender.send(Array(line.utf8)) }

        let new = try RelayProcess(driver: driver, arguments(port: port, takeover: true))
        #expect(new.waitForLog("takeover complete"), "\(new.standardError)")
        #expect(old.waitForExit(seconds: 10) == 0, "\(old.standardError)")
        #expect(UnixListenerFile.current(at: path) == file, "the old relay left the file, the same socket's")
        #expect(fileMode(path) == 0o660, "the new relay's --unix-socket-mode applies to the file it took over")
        // The same connected client goes on sending: the socket itself was handed over.
        let after = (0..<300).map { "after.\($0):1|c" }
        for line in after { try sender.send(Array(line.utf8)) }
        let received = try collect(from: [backend], expectedLines: before.count + after.count)
        #expect(received.lines[0].sorted() == (before + after).sorted(), "every line once, across the takeover")
        new.signal(SIGTERM)
        #expect(new.waitForExit() == 0, "\(new.standardError)")
        #expect(!fileExists(path), "the last relay removed the file")
    }
}
