@testable import RelayKernel
import Foundation
import Glibc
import Synchronization
import Testing
@testable import UringRelay

/// Upgrades without loss: `--control-socket` and `run --takeover` between launched relays.
@Suite("Takeover: listening sockets handed to a new relay", .onOwnThread)
struct TakeoverTests {
    /// A control socket path of its own for one test, removed if a relay left it.
    final class ControlPath: Sendable {
        let path: String
        init() { path = "/tmp/statsrelay-takeover-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock" }
        deinit { unlink(path) }
        var exists: Bool { access(path, F_OK) == 0 }
    }

    /// The arguments of a relay on 127.0.0.1:`port` relaying to `backend`.
    static func arguments(port: UInt16, threads: [String], control: ControlPath, backend: TestBackend, takeover: Bool = false) -> [String] {
        ["--bind", "127.0.0.1", "--port", "\(port)", "--control-socket", control.path] + threads
            + (takeover ? ["--takeover", control.path] : []) + [backend.spec]
    }

    /// One worker on a CPU of its own, for the tests that need no second worker.
    static var oneWorker: [String] { ["--threads", "1", "--cpus", "\(nextTestCPU())"] }

    /// The distinct line `take.INDEX:1|c`.
    static func line(_ index: Int) -> String { "take.\(index):1|c" }

    /// A successor played by a test that has taken a one-worker relay's offer and holds it
    /// (never saying `ready` unless the test does).
    struct HeldOffer: ~Copyable {
        /// The test's end of the takeover.
        let connection: UnixStreamSocket
        /// The `sockets` frame: its message and the socket it carried.
        let message: TakeoverMessage?
        let payload: [UInt8]
        let sockets: [SocketBox]
    }

    /// Asks `relay` (one worker, one listener on `address`) at `control` for its sockets in
    /// protocol `version`, checks its offer, and returns the `sockets` frame with the connection.
    static func takeOffer(
        control: ControlPath, address: SocketAddress, relay: RelayProcess, version: Int = TakeoverMessage.version
    ) throws -> HeldOffer {
        let connection = try UnixStreamSocket.connected(to: control.path)
        let request = TakeoverMessage.takeover(version: version, threads: 1, listeners: [address.description])
        try connection.sendFrame(request.encoded, timeoutMilliseconds: 2_000)
        let offer = try connection.receiveFrame(timeoutMilliseconds: 5_000)
        #expect(TakeoverMessage(decoding: offer.payload) == .offer(version: version, threads: 1, listeners: 1, pid: relay.process.processIdentifier))
        let frame = try connection.receiveFrame(timeoutMilliseconds: 5_000)
        #expect(frame.sockets.count == 1)
        return HeldOffer(connection: connection, message: TakeoverMessage(decoding: frame.payload), payload: frame.payload, sockets: frame.sockets)
    }

    @Test(
        "continuous traffic through four successive takeovers and a stop: every line arrives exactly once, each relay's counters reconcile, each new relay serves the admin endpoint on the port the old one gave up",
        arguments: ioDrivers)
    func chain(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let control = ControlPath()
        let admin = AdminAddress(host: "127.0.0.1", port: try unusedTCPPort())
        var current = try RelayProcess(
            driver: driver, ["--admin", "\(admin)"] + Self.arguments(port: 0, threads: twoWorkerArguments, control: control, backend: backend))
        let address = try current.listenAddress()
        #expect(current.waitForLog("control socket on \(control.path)"), "\(current.standardError)")
        let sender = try StoppableSender(to: address, perSecond: 4_000, maxDatagrams: 40_000, seconds: 15) { Array(Self.line($0).utf8) }
        #expect(sender.waitUntilSent(500, seconds: 5))
        var finished: [RelayProcess] = []
        for step in 1...4 {
            let next = try RelayProcess(
                driver: driver,
                ["--admin", "\(admin)"]
                    + Self.arguments(port: address.port, threads: twoWorkerArguments, control: control, backend: backend, takeover: true))
            _ = try next.listenAddress()
            #expect(next.waitForLog("takeover complete"), "step \(step): \(next.standardError)")
            #expect(next.waitForLog("control socket on \(control.path)"), "step \(step): \(next.standardError)")
            #expect(next.waitForLog("admin endpoint on http://\(admin)"), "step \(step): \(next.standardError)")
            #expect(try AdminClient.get("/healthz", from: admin).status == 200, "step \(step)")
            #expect(current.waitForExit(seconds: 10) == 0, "step \(step): \(current.standardError)")
            #expect(current.standardError.contains("handed over: the new relay receives on the listening sockets"))
            finished.append(current)
            current = next
            // Traffic keeps flowing between two takeovers.
            #expect(sender.waitUntilSent(sender.sent + 300, seconds: 5), "step \(step)")
        }
        let sent = sender.stop()
        #expect(sent.failed == 0)
        current.signal(SIGTERM)
        #expect(current.waitForExit(seconds: 10) == 0, "\(current.standardError)")
        finished.append(current)
        #expect(!control.exists, "the last relay removed its control socket at exit")

        let received = try collect(from: [backend], expectedLines: sent.sent, seconds: 15)
        let lines = received.lines[0]
        let distinct = Set(lines)
        #expect(lines.count == sent.sent, "lines received \(lines.count), sent \(sent.sent)")
        #expect(distinct.count == lines.count, "\(lines.count - distinct.count) lines duplicated")
        #expect(distinct == Set((0..<sent.sent).map(Self.line)), "\(Set((0..<sent.sent).map(Self.line)).subtracting(distinct).count) lines lost")
        var receivedByRelays: UInt64 = 0
        for (index, process) in finished.enumerated() {
            let linesReceived = try #require(process.counter("statsrelay.lines_received"), "relay \(index)")
            #expect(process.counter("statsrelay.lines_forwarded") == linesReceived, "relay \(index): \(process.standardError)")
            #expect(process.counter("statsrelay.datagrams_dropped.kernel") == 0, "relay \(index)")
            #expect(process.counter("statsrelay.datagrams_dropped.at_exit") == 0, "relay \(index)")
            receivedByRelays += linesReceived
        }
        #expect(receivedByRelays == UInt64(sent.sent), "the relays' lines_received add up to what was sent")
    }

    @Test("a takeover asking for other threads or other listeners is refused with exit 64, and the running relay keeps relaying", arguments: ioDrivers)
    func refusedOnMismatch(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let control = ControlPath()
        // A socket file left by a relay that died: replaced at start.
        let stale = try UnixStreamSocket.listening(at: control.path)
        _ = consume stale
        #expect(control.exists)
        let running = try RelayProcess(driver: driver, Self.arguments(port: 0, threads: Self.oneWorker, control: control, backend: backend))
        let address = try running.listenAddress()
        #expect(running.waitForLog("control socket on \(control.path)"), "\(running.standardError)")

        let threads = try RelayProcess.run(
            ["--io-backend", driver.rawValue] + Self.arguments(port: address.port, threads: twoWorkerArguments, control: control, backend: backend, takeover: true))
        #expect(threads.status == 64, "\(threads.error)")
        #expect(threads.error.contains("takeover refused by the running relay (mismatch): threads differ: the running relay has 1 workers, the new one asks for 2"), "\(threads.error)")
        let other = try unusedPort()
        let listeners = try RelayProcess.run(
            ["--io-backend", driver.rawValue] + Self.arguments(port: other, threads: Self.oneWorker, control: control, backend: backend, takeover: true))
        #expect(listeners.status == 64, "\(listeners.error)")
        #expect(listeners.error.contains("listeners differ: running 127.0.0.1:0 (bound 127.0.0.1:\(address.port))"), "\(listeners.error)")
        #expect(listeners.error.contains("asked 127.0.0.1:\(other)"), "\(listeners.error)")
        #expect(listeners.error.contains("not running here: 127.0.0.1:\(other); running but not asked: 127.0.0.1:0 (bound 127.0.0.1:\(address.port))"), "\(listeners.error)")

        try send((0..<100).map(Self.line), to: address)
        let received = try collect(from: [backend], expectedLines: 100)
        #expect(Set(received.lines[0]) == Set((0..<100).map(Self.line)))
        running.signal(SIGTERM)
        #expect(running.waitForExit() == 0, "\(running.standardError)")
        #expect(running.counter("statsrelay.lines_forwarded") == 100)
        #expect(running.standardError.contains("takeover refused: this relay keeps running"))
    }

    @Test(
        "a second takeover while one is under way is refused (exit 75); garbage on the control socket is refused and not logged; the relay keeps relaying and a takeover then succeeds",
        arguments: ioDrivers)
    func busyAndGarbage(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let control = ControlPath()
        let running = try RelayProcess(driver: driver, Self.arguments(port: 0, threads: Self.oneWorker, control: control, backend: backend))
        let address = try running.listenAddress()
        #expect(running.waitForLog("control socket on \(control.path)"), "\(running.standardError)")

        // A takeover held open by the test before `ready`.
        do {
            let held = try Self.takeOffer(control: control, address: address, relay: running)
            // Version 2: with the socket's kernel drop counter where this relay stopped counting (none yet).
            #expect(held.message == .sockets(index: 0, address: address.description, drops: [0]))
            let passed = held.sockets
            #expect(passed.first?.socket.localAddress == address)
            #expect(passed.first?.socket.listenerMismatch(expected: address) == nil)

            let second = try RelayProcess.run(
                ["--io-backend", driver.rawValue] + Self.arguments(port: address.port, threads: Self.oneWorker, control: control, backend: backend, takeover: true))
            #expect(second.status == 75, "\(second.error)")
            #expect(second.error.contains("(busy): another takeover is under way"), "\(second.error)")
            // The holder goes away without `ready`: the relay keeps its sockets and runs on.
            _ = consume held
        }
        #expect(running.waitForLog("takeover failed in the new relay; this one keeps running"), "\(running.standardError)")

        let marker = "GARBAGE-\(UInt32.random(in: 0...UInt32.max))"
        for garbage: [UInt8] in [
            [0xff, 0xff, 0xff, 0xff] + Array(marker.utf8),  // a length far beyond a frame
            [0, 0, 0, 0],  // an empty frame
            [0, 0, 0, UInt8(marker.utf8.count)] + Array(marker.utf8),  // a frame, not a message
            [0, 0, 0, 8] + Array("takeover".utf8),  // a verb without its fields
            [0, 0, 0, 20, 1, 2, 3],  // cut short
        ] {
            let peer = try UnixStreamSocket.connected(to: control.path)
            _ = garbage.withUnsafeBytes { Glibc.send(peer.descriptor, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            shutdown(peer.descriptor, Int32(SHUT_WR))
            // The relay answers a refusal (or just closes), and closes.
            if let answer = try? peer.receiveFrame(timeoutMilliseconds: 8_000) {
                guard case .refused(.malformed, _)? = TakeoverMessage(decoding: answer.payload) else {
                    Issue.record("answer \(String(decoding: answer.payload, as: UTF8.self))")
                    continue
                }
            }
        }
        #expect(!running.standardError.contains(marker), "wire data was logged")

        try send((0..<100).map(Self.line), to: address)
        #expect(Set(try collect(from: [backend], expectedLines: 100).lines[0]) == Set((0..<100).map(Self.line)))

        let next = try RelayProcess(
            driver: driver, Self.arguments(port: address.port, threads: Self.oneWorker, control: control, backend: backend, takeover: true))
        _ = try next.listenAddress()
        #expect(next.waitForLog("takeover complete"), "\(next.standardError)")
        #expect(running.waitForExit() == 0, "\(running.standardError)")
        try send((100..<200).map(Self.line), to: address)
        #expect(Set(try collect(from: [backend], expectedLines: 100).lines[0]) == Set((100..<200).map(Self.line)))
        next.signal(SIGTERM)
        #expect(next.waitForExit() == 0, "\(next.standardError)")
        #expect(running.counter("statsrelay.lines_forwarded") == 100)
        #expect(next.counter("statsrelay.lines_forwarded") == 100)
    }

    @Test(
        "a new relay that fails to start on the received sockets says so, and the old relay keeps relaying on them untouched",
        arguments: ioDrivers)
    func newRelayFails(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let python = try RelayLauncher.requirePython()
        let backend = try TestBackend()
        let control = ControlPath()
        let running = try RelayProcess(driver: driver, Self.arguments(port: 0, threads: Self.oneWorker, control: control, backend: backend))
        let address = try running.listenAddress()
        #expect(running.waitForLog("control socket on \(control.path)"), "\(running.standardError)")
        // The new relay demands io_uring where a seccomp filter refuses it: it receives the
        // sockets, cannot start, says `failed` and exits 69.
        let failing = try RelayProcess(
            driver: .uring, launcher: RelayLauncher.seccompBlocksIOUringSetup.command(python: python), checksDriver: false,
            Self.arguments(port: address.port, threads: Self.oneWorker, control: control, backend: backend, takeover: true))
        #expect(failing.waitForExit() == 69, "\(failing.standardError)")
        #expect(failing.standardError.contains("takeover: received the running relay's listening sockets"), "\(failing.standardError)")
        #expect(running.waitForLog("takeover failed in the new relay; this one keeps running"), "\(running.standardError)")
        #expect(running.standardError.contains("the new relay failed: io_backend=uring is unavailable"), "\(running.standardError)")

        try send((0..<100).map(Self.line), to: address)
        #expect(Set(try collect(from: [backend], expectedLines: 100).lines[0]) == Set((0..<100).map(Self.line)))
        running.signal(SIGTERM)
        #expect(running.waitForExit() == 0, "\(running.standardError)")
        #expect(running.counter("statsrelay.lines_forwarded") == 100)
    }

    @Test("a control socket path held by a file that is not a socket is refused at start with exit 71")
    func notASocket() throws {
        let control = ControlPath()
        #expect(FileManager.default.createFile(atPath: control.path, contents: Data("keep".utf8)))
        let backend = try TestBackend()
        let result = try RelayProcess.run(
            ["--io-backend", "portable"] + Self.arguments(port: 0, threads: Self.oneWorker, control: control, backend: backend))
        #expect(result.status == 71, "\(result.error)")
        #expect(result.error.contains("bind unix \(control.path): Address already in use (errno 98); the path exists and is not a socket"), "\(result.error)")
        #expect(FileManager.default.contents(atPath: control.path) == Data("keep".utf8))
    }
}

/// A thread sending `datagram(index)` at `perSecond` from its own socket on 127.0.0.1 until
/// stopped, `maxDatagrams` sent, or `seconds` pass.
final class StoppableSender: Sendable {
    private final class Shared: Sendable {
        let running = Atomic<Bool>(true)
        let sent = Atomic<Int>(0)
        let failed = Atomic<Int>(0)
    }
    private let shared = Shared()
    private let thread: WorkerThreadHandle

    init(
        to address: SocketAddress, perSecond: Int, maxDatagrams: Int, seconds: Double, datagram: @escaping @Sendable (Int) -> [UInt8]
    ) throws {
        let socket = SocketBox(try UDPSocket.bound(to: SocketAddress(numericHost: "127.0.0.1", port: 0)!))
        thread = WorkerThreadHandle(try WorkerThread(name: "test-takeover", cpu: nil) { [shared] _ in
            let start = MonotonicClock.nanoseconds()
            let deadline = start + UInt64(seconds * 1e9)
            var index = 0
            while index < maxDatagrams && shared.running.load(ordering: .relaxed) {
                let now = MonotonicClock.nanoseconds()
                if now > deadline { break }
                let due = min(maxDatagrams, Int((now - start) * UInt64(perSecond) / 1_000_000_000) + 1)
                while index < due {
                    do { try socket.socket.send(datagram(index), to: address) } catch { shared.failed.add(1, ordering: .relaxed) }
                    index += 1
                }
                shared.sent.store(index, ordering: .relaxed)
                usleep(1_000)
            }
            shared.sent.store(index, ordering: .relaxed)
        })
    }

    /// How many went out so far.
    var sent: Int { shared.sent.load(ordering: .relaxed) }

    /// Waits (polling, at most `seconds`) until `count` went out; `false` if the sender ended first.
    func waitUntilSent(_ count: Int, seconds: Double) -> Bool {
        let deadline = MonotonicClock.nanoseconds() + UInt64(seconds * 1e9)
        while sent < count {
            if MonotonicClock.nanoseconds() > deadline { return false }
            usleep(1_000)
        }
        return true
    }

    /// Stops, waits for the thread, and says how many went out and how many sends failed.
    func stop() -> (sent: Int, failed: Int) {
        shared.running.store(false, ordering: .relaxed)
        thread.join()
        return (shared.sent.load(ordering: .relaxed), shared.failed.load(ordering: .relaxed))
    }
}
