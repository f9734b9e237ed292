@testable import RelayKernel
import Foundation
import Glibc
import Testing
@testable import UringRelay

/// A `statsrelay sink` child: standard output and standard error collected as they come.
final class SinkProcess: @unchecked Sendable {  // the texts are guarded by `LockedText`
    let process = Process()
    let ports: [UInt16]
    private var outputReader: PipeReader?
    private var errorReader: PipeReader?
    private var output: LockedText { outputReader?.text ?? LockedText() }
    private var errors: LockedText { errorReader?.text ?? LockedText() }
    private let outputPipe = Pipe()
    private let errorPipe = Pipe()

    /// Starts `statsrelay sink` on `ports` (free ports below the ephemeral range, `unusedPort()`) with
    /// `extra` options, and waits until every port is bound.
    init(ports count: Int, _ extra: [String] = []) throws {
        ports = try (0..<count).map { _ in try unusedPort() }
        process.executableURL = statsrelayExecutable
        process.arguments = ["sink"] + ports.flatMap { ["--port", "\($0)"] } + extra
        process.standardOutput = outputPipe
        process.standardError = errorPipe
        try process.run()
        outputReader = PipeReader(outputPipe.fileHandleForReading)
        errorReader = PipeReader(errorPipe.fileHandleForReading)
        // Bound: each port shows up in /proc/net/udp.
        let bound = poll(seconds: 10) { [ports] in ports.allSatisfy { !udpReceiveQueues(port: $0).isEmpty } || !process.isRunning }
        #expect(bound && process.isRunning, "the sink did not bind its ports: \(standardError)")
    }

    deinit { if process.isRunning { kill(process.processIdentifier, SIGKILL) } }

    var standardOutput: String { output.withLock { $0 } }
    var standardError: String { errors.withLock { $0 } }

    /// Stops the sink with `signal` and returns its exit status (`nil`: still running after
    /// `seconds`, then killed), with the rest of both outputs read.
    func stop(_ signal: Int32 = SIGTERM, seconds: Double = 10) -> Int32? {
        kill(process.processIdentifier, signal)
        let exited = poll(seconds: seconds) { !process.isRunning }
        if !exited { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
        for reader in [outputReader, errorReader] { #expect(reader?.waitForEnd(seconds: 5) == true, "the sink's output did not end") }
        return exited && process.terminationReason == .exit ? process.terminationStatus : nil
    }

    /// `:PORT datagrams=D lines=L` for each port, as the sink prints its totals.
    func totals(_ counts: [(datagrams: Int, lines: Int)]) -> String {
        zip(ports, counts).map { ":\($0) datagrams=\($1.datagrams) lines=\($1.lines)" }.joined(separator: "  ")
    }
}

/// `statsrelay sink` (README, "Tools"): a stand-in backend that counts datagrams and lines per
/// port. It runs no io driver (plain sockets, one thread per port), so only the case where a
/// relay feeds it is parametrised by driver.
@Suite("statsrelay sink", .serialized, .timeLimit(.minutes(1)), .onOwnThread)
struct SinkCommandTests {
    @Test("counts datagrams and non-empty lines per port, prints each line with --print, running totals with --report-every, and the totals at SIGTERM")
    func countsPerPort() throws {
        let sink = try SinkProcess(ports: 2, ["--print", "--report-every", "50ms"])
        let first = SocketAddress(numericHost: "127.0.0.1", port: sink.ports[0])!
        let second = SocketAddress(numericHost: "127.0.0.1", port: sink.ports[1])!
        // Port 1: three datagrams, three lines (the last datagram is an empty line only).
        try send(["a.one:1|c\na.two:2|c", "a.three:3|c\n", "\n"], to: first)
        // Port 2: one datagram of three lines.
        try send(["b.one:1|c\nb.two:2|g\nb.three:3|ms"], to: second)
        let expected = sink.totals([(3, 3), (1, 3)])
        // The running totals are printed when they change: wait for the ones that count it all.
        #expect(poll(seconds: 10) { sink.standardError.contains(expected) }, "running totals: \(sink.standardError)")
        #expect(sink.stop() == 0, "stderr: \(sink.standardError)")
        let lastLine = sink.standardError.split(separator: "\n").last.map(String.init)
        #expect(lastLine == "final: " + expected)
        let printed = sink.standardOutput.split(separator: "\n").map(String.init)
        #expect(printed.filter { $0.hasPrefix(":\(sink.ports[0]) ") }
                == ["a.one:1|c", "a.two:2|c", "a.three:3|c"].map { ":\(sink.ports[0]) \($0)" })
        #expect(printed.filter { $0.hasPrefix(":\(sink.ports[1]) ") }
                == ["b.one:1|c", "b.two:2|g", "b.three:3|ms"].map { ":\(sink.ports[1]) \($0)" })
        #expect(printed.count == 6)
    }

    @Test("without --print nothing goes to standard output; SIGINT stops it as SIGTERM does")
    func quietAndSIGINT() throws {
        let sink = try SinkProcess(ports: 1, ["--report-every", "0ms"])
        try send((0..<5).map { "quiet.\($0):1|c" }, to: SocketAddress(numericHost: "127.0.0.1", port: sink.ports[0])!)
        // With no running totals the final line is the only count, and the sink stops without
        // draining its socket: wait until it has read every datagram (its queue is empty).
        #expect(poll(seconds: 10) { udpReceiveQueues(port: sink.ports[0]) == [0] })
        #expect(sink.stop(SIGINT) == 0, "stderr: \(sink.standardError)")
        #expect(sink.standardOutput.isEmpty)
        #expect(sink.standardError.split(separator: "\n").last.map(String.init) == "final: " + sink.totals([(5, 5)]))
    }

    @Test("bad options exit 64 naming what was wrong", arguments: [
        (["sink"], "give at least one --port"),
        (["sink", "--port", "70000"], "invalid --port '70000': must be 1-65535"),
        (["sink", "--port", "0"], "invalid --port '0': must be 1-65535"),
        (["sink", "--port", "9001", "--bind", "nowhere"], "invalid --bind 'nowhere'"),
        (["sink", "--port", "9001", "--report-every", "soon"], "--report-every 'soon'"),
    ])
    func badOptions(_ arguments: [String], _ message: String) throws {
        let result = try RelayProcess.run(arguments)
        #expect(result.status == 64)
        #expect(result.error.contains(message), "stderr: \(result.error)")
    }

    @Test("--report-every 0, which the help gives as 'only at exit', is accepted")
    func reportEveryZero() throws {
        let port = try unusedPort()
        let process = Process()
        process.executableURL = statsrelayExecutable
        process.arguments = ["sink", "--port", "\(port)", "--report-every", "0"]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        defer { if process.isRunning { kill(process.processIdentifier, SIGKILL) } }
        // Running means accepted: a refused option exits 64 at once.
        let bound = poll(seconds: 10) { !udpReceiveQueues(port: port).isEmpty || !process.isRunning }
        kill(process.processIdentifier, SIGTERM)
        process.waitUntilExit()
        #expect(bound && process.terminationStatus == 0, "exit status \(process.terminationStatus)")
    }

    @Test("a port already taken exits 71 with the failed call, address and reason")
    func portTaken() throws {
        let holder = try UDPSocket.bound(to: SocketAddress(numericHost: "127.0.0.1", port: 0)!)
        let port = holder.localAddress.port
        let result = try RelayProcess.run(["sink", "--port", "\(port)"])
        #expect(result.status == 71)
        #expect(result.error.contains("bind udp 127.0.0.1:\(port): Address already in use (errno 98)"), "stderr: \(result.error)")
    }

    @Test("as a relay's backends, the sink counts every line the relay sent each of them", arguments: ioDrivers)
    func behindARelay(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let sink = try SinkProcess(ports: 2, ["--report-every", "50ms"])
        let relay = try RelayProcess(driver: driver, ["--bind", "127.0.0.1", "--port", "0", "--threads", "1"]
            + sink.ports.map { "127.0.0.1:\($0)" })
        let address = try relay.listenAddress()
        let lines = (0..<500).map { "sink.relay.\($0):1|c" }
        try send(stride(from: 0, to: lines.count, by: 10).map { lines[$0..<$0 + 10].joined(separator: "\n") }, to: address)
        relay.signal(SIGTERM)
        #expect(relay.waitForExit() == 0)
        let perPort = (0..<2).map { backend in lines.filter { expectedBackend(of: $0, backends: 2) == backend }.count }
        #expect(poll(seconds: 10) { sink.ports.allSatisfy { udpReceiveQueues(port: $0) == [0] } })
        #expect(sink.stop() == 0)
        let final = try #require(sink.standardError.split(separator: "\n").last { $0.hasPrefix("final: ") })
        // ":PORT datagrams=D lines=L", two spaces apart.
        let counts = final.dropFirst("final: ".count).split(separator: " ").filter { !$0.isEmpty }
        let linesCounted = counts.filter { $0.hasPrefix("lines=") }.map { Int($0.dropFirst("lines=".count)) }
        let datagramsCounted = counts.filter { $0.hasPrefix("datagrams=") }.compactMap { Int($0.dropFirst("datagrams=".count)) }
        #expect(counts.filter { $0.hasPrefix(":") }.map(String.init) == sink.ports.map { ":\($0)" }, "\(final)")
        #expect(linesCounted == perPort, "\(final)")
        #expect(datagramsCounted.allSatisfy { $0 > 0 }, "\(final)")
    }
}
