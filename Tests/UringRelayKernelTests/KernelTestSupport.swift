@testable import RelayKernel
import Dispatch
import Foundation
import Glibc
import Synchronization
import Testing
@testable import UringRelay

/// The I/O drivers every kernel test runs on: parametrise with `@Test(arguments: ioDrivers)`
/// and call `try requireDriver(driver)` first.
let ioDrivers: [IOBackendChoice] = [.uring, .portable]

/// Cancels the running test case, reported as skipped with the reason, when `driver` cannot
/// run on this host (io_uring blocked or missing); the portable driver runs everywhere.
func requireDriver(_ driver: IOBackendChoice) throws {
    if driver != .portable, let reason = KernelSupport.unavailableReason {
        try Test.cancel(Comment(rawValue: "io_uring unavailable: \(reason)"))
    }
}

/// Whether this host has an IPv6 loopback (containers sometimes disable IPv6).
let ipv6LoopbackAvailable: Bool = (try? UDPSocket.bound(to: SocketAddress(numericHost: "::1", port: 0)!)) != nil

/// A UDP socket on 127.0.0.1 standing in for one StatsD backend.
final class TestBackend: @unchecked Sendable {  // used from one test at a time
    let socket: UDPSocket
    let address: SocketAddress

    init(host: String = "127.0.0.1") throws {
        socket = try UDPSocket.bound(to: SocketAddress(numericHost: host, port: 0)!, receiveBufferBytes: 16 << 20)
        address = socket.localAddress
    }

    /// `127.0.0.1:PORT` or `[::1]:PORT`, as given to the relay.
    var spec: String { address.description }
}

/// What the backends received: datagrams (as text) per backend.
struct Received {
    var datagrams: [[String]]

    /// The lines each backend received, in arrival order. Each ends with `\n`, but for a line
    /// alone in its packet because it would not fit with one (`BatchAssembler`).
    var lines: [[String]] {
        datagrams.map {
            $0.flatMap { datagram in
                let lines = datagram.split(separator: "\n", omittingEmptySubsequences: false)
                return (datagram.hasSuffix("\n") ? lines.dropLast() : lines[...]).map(String.init)
            }
        }
    }

    var totalLines: Int { lines.reduce(0) { $0 + $1.count } }
}

/// Receives from every backend until `expectedLines` lines have arrived in all, or `seconds`
/// pass, then keeps listening `settle` milliseconds more to catch any duplicate or extra line.
func collect(from backends: [TestBackend], expectedLines: Int, seconds: Double = 15, settleMilliseconds: Int32 = 100) throws -> Received {
    var received = Received(datagrams: Array(repeating: [], count: backends.count))
    let deadline = Date().addingTimeInterval(seconds)
    var settling = false
    while Date() < deadline {
        var got = false
        for (index, backend) in backends.enumerated() {
            while let datagram = try backend.socket.receive(timeoutMilliseconds: 0) {
                received.datagrams[index].append(String(decoding: datagram.bytes, as: UTF8.self))
                got = true
            }
        }
        if received.totalLines >= expectedLines {
            if settling && !got { break }
            settling = true
        }
        if !got {
            // Block on the first backend's socket briefly; any arrival ends the wait early.
            var pollers = backends.map { pollfd(fd: $0.socket.descriptor, events: Int16(POLLIN), revents: 0) }
            _ = poll(&pollers, nfds_t(pollers.count), settling ? settleMilliseconds : 50)
        }
    }
    return received
}

/// Sends datagrams to `address` from a fresh socket.
func send(_ datagrams: [String], to address: SocketAddress) throws {
    let sender = try UDPSocket.bound(to: SocketAddress(numericHost: "127.0.0.1", port: 0)!)
    for datagram in datagrams { try sender.send(Array(datagram.utf8), to: address) }
}

/// The metric name of a StatsD line: the bytes before the first `:`.
func metricName(of line: String) -> String { String(line.prefix { $0 != ":" }) }

/// The backend index the Go StatsRelay would route `line` to.
func expectedBackend(of line: String, backends: Int) -> Int {
    Router(backendCount: backends).backend(forName: metricName(of: line))
}

/// A relay running in this process on 127.0.0.1 with a kernel-chosen port.
final class InProcessRelay: @unchecked Sendable {
    let relay: Relay
    let address: SocketAddress

    init(
        backends: [TestBackend], driver: IOBackendChoice = .uring, configure: (inout RelayConfiguration) -> Void = { _ in }
    ) throws {
        var configuration = RelayConfiguration(backends: try backends.map { try BackendAddress(parsing: $0.spec) })
        configuration.ioBackend = driver
        configuration.bindHost = "127.0.0.1"
        configuration.port = 0
        configuration.threads = 1
        configure(&configuration)
        relay = try Relay(configuration: configuration, logger: .init(label: "test"))
        address = try relay.start().listen
    }

    /// Stops the relay (drain, flush) and returns its counters.
    func stop() -> RelayCounters {
        relay.stop()
        let (counters, failures) = relay.wait()
        #expect(failures.isEmpty)
        return counters
    }
}

/// The `statsrelay` executable built beside this test bundle.
var statsrelayExecutable: URL {
    let me = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
    return me.deletingLastPathComponent().appendingPathComponent("statsrelay")
}

/// Text appended from one thread and read from another.
final class LockedText: Sendable {
    private let text = Mutex("")
    func withLock<Result: Sendable>(_ body: (inout String) -> Result) -> Result { text.withLock { body(&$0) } }
}

/// A `statsrelay` child process whose standard error is watched for events.
final class RelayProcess: @unchecked Sendable {  // the log buffer is guarded by `log`
    let process = Process()
    private let log = LockedText()
    private let logChanged = DispatchSemaphore(value: 0)
    private let exited = DispatchSemaphore(value: 0)
    private let stdoutPipe = Pipe()
    private let stderrPipe = Pipe()

    private let reaped = Atomic<Bool>(false)

    /// Starts `statsrelay` with `arguments`, on `driver` when given (`--io-backend`), under
    /// `launcher` when given (a command that ends by executing its last arguments, e.g. one that
    /// restricts the child first: see `RelayLauncher`).
    init(driver: IOBackendChoice? = nil, launcher: [String] = [], _ arguments: [String]) throws {
        let relayArguments = adminOff((driver.map { ["--io-backend", $0.rawValue] } ?? []) + arguments)
        if let program = launcher.first {
            process.executableURL = URL(fileURLWithPath: program)
            process.arguments = Array(launcher.dropFirst()) + [statsrelayExecutable.path] + relayArguments
        } else {
            process.executableURL = statsrelayExecutable
            process.arguments = relayArguments
        }
        process.standardOutput = stdoutPipe
        process.standardError = stderrPipe
        stderrPipe.fileHandleForReading.readabilityHandler = { [log, logChanged] handle in
            let data = handle.availableData
            guard !data.isEmpty else { return }
            log.withLock { $0 += String(decoding: data, as: UTF8.self) }
            logChanged.signal()
        }
        process.terminationHandler = { [exited] _ in exited.signal() }
        try process.run()
    }

    /// Everything written to standard error so far.
    var standardError: String { log.withLock { $0 } }

    /// Waits until standard error contains `text` or the process exits, at most `seconds`.
    @discardableResult
    func waitForLog(_ text: String, seconds: Double = 20) -> Bool {
        let deadline = DispatchTime.now() + seconds
        while !standardError.contains(text) {
            if !process.isRunning { return standardError.contains(text) }
            if logChanged.wait(timeout: min(deadline, .now() + 0.1)) == .timedOut && DispatchTime.now() >= deadline {
                return standardError.contains(text)
            }
        }
        return true
    }

    /// The first standard-error line containing `text`.
    func logLine(containing text: String) -> String? {
        standardError.split(separator: "\n").first { $0.contains(text) }.map(String.init)
    }

    /// The port from the `listening on HOST:PORT` start-up line.
    func listenAddress() throws -> SocketAddress {
        #expect(waitForLog("listening on "), "relay did not start: \(standardError)")
        let line = try #require(standardError.split(separator: "\n").first { $0.contains("listening on ") })
        let spec = try #require(line.split(separator: "listening on ").last)
        let port = try #require(spec.split(separator: ":").last.flatMap { UInt16($0) })
        return SocketAddress(numericHost: "127.0.0.1", port: port)!
    }

    func signal(_ number: Int32) { kill(process.processIdentifier, number) }

    /// Sends SIGSTOP and waits, at most `seconds`, until every thread of the relay is stopped.
    /// `kill` returns before a busy or sleeping thread has stopped, and until then a worker may
    /// still take datagrams from its socket. `waitid(WSTOPPED | WNOWAIT)` would report the
    /// whole process stopping but not each thread, and the child belongs to Foundation's
    /// `Process`; so this reads each thread's state from /proc.
    func suspend(seconds: Double = 5) -> Bool {
        signal(SIGSTOP)
        let deadline = Date().addingTimeInterval(seconds)
        let tasks = "/proc/\(process.processIdentifier)/task"
        while Date() < deadline {
            let threads = (try? FileManager.default.contentsOfDirectory(atPath: tasks)) ?? []
            let states = threads.compactMap { thread -> Character? in
                // The state follows the parenthesised command name: "PID (comm) S ...".
                // Decoded leniently: a thread's name may hold any bytes, and a thread skipped here
                // would count as stopped.
                guard let data = FileManager.default.contents(atPath: "\(tasks)/\(thread)/stat") else { return nil }
                let stat = String(decoding: data, as: UTF8.self)
                guard let close = stat.lastIndex(of: ")") else { return "?" }
                return stat[stat.index(after: close)...].first { $0 != " " }
            }
            if !states.isEmpty && states.allSatisfy({ $0 == "T" || $0 == "t" }) { return true }
            usleep(1_000)
        }
        return false
    }

    /// Waits for the process to exit, at most `seconds` (then kills it), and returns its status.
    /// Later calls return the same status at once.
    func waitForExit(seconds: Double = 10) -> Int32? {
        if reaped.load(ordering: .acquiring) { return process.terminationStatus }
        if exited.wait(timeout: .now() + seconds) == .timedOut {
            kill(process.processIdentifier, SIGKILL)
            return nil
        }
        // The child has exited, so its end of the pipe is closed: this read ends at EOF.
        stderrPipe.fileHandleForReading.readabilityHandler = nil
        let rest = stderrPipe.fileHandleForReading.readDataToEndOfFile()
        log.withLock { $0 += String(decoding: rest, as: UTF8.self) }
        reaped.store(true, ordering: .releasing)
        return process.terminationStatus
    }

    /// A counter's value from the report printed at exit.
    func counter(_ name: String) -> UInt64? {
        standardError.split(separator: "\n").first { $0.hasPrefix(name + " ") }
            .flatMap { UInt64($0.split(separator: " ").last ?? "") }
    }

    /// Runs `statsrelay` with `arguments` to completion and returns status, stdout and stderr.
    static func run(_ arguments: [String]) throws -> (status: Int32, output: String, error: String) {
        let process = Process()
        process.executableURL = statsrelayExecutable
        process.arguments = adminOff(arguments)
        let output = Pipe()
        let error = Pipe()
        process.standardOutput = output
        process.standardError = error
        try process.run()
        let outData = output.fileHandleForReading.readDataToEndOfFile()
        let errData = error.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: outData, as: UTF8.self), String(decoding: errData, as: UTF8.self))
    }
}

/// A thread sending one-line datagrams as fast as it can, until stopped or `maxDatagrams` sent.
final class SteadySender: Sendable {
    private final class Shared: Sendable {
        let running = Atomic<Bool>(true)
        let sent = Atomic<Int>(0)
    }
    private let shared = Shared()
    private let thread: WorkerThreadHandle

    init(to address: SocketAddress, maxDatagrams: Int) throws {
        let socket = SocketBox(try UDPSocket.bound(to: SocketAddress(numericHost: "127.0.0.1", port: 0)!))
        thread = WorkerThreadHandle(try WorkerThread(name: "test-sender", cpu: nil) { [shared] _ in
            for index in 0..<maxDatagrams where shared.running.load(ordering: .relaxed) {
                try? socket.socket.send(Array("steady.\(index % 1000):1|c".utf8), to: address)
                shared.sent.add(1, ordering: .relaxed)
            }
        })
    }

    /// Waits (polling the counter, bounded by `seconds`) until `count` datagrams went out.
    func waitUntilSent(_ count: Int, seconds: Double) -> Bool {
        let deadline = MonotonicClock.nanoseconds() + UInt64(seconds * 1e9)
        while shared.sent.load(ordering: .relaxed) < count {
            if MonotonicClock.nanoseconds() > deadline { return false }
            sched_yield()
        }
        return true
    }

    /// Stops sending and waits for the thread.
    func stop() {
        shared.running.store(false, ordering: .relaxed)
        thread.join()
    }
}
