import Dispatch
import Foundation
import Glibc
@testable import RelayKernel
import RoutingReference
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

/// The driver a relay told to use `choice` must run: `auto` runs io_uring where this host
/// allows it (the same probe the relay runs), the others run as told.
func driverExpected(for choice: IOBackendChoice) -> IOBackendChoice {
    choice == .auto ? (KernelSupport.unavailableReason == nil ? .uring : .portable) : choice
}

/// How many io_uring instances process `pid` holds open (its `anon_inode:[io_uring]`
/// descriptors), read from `/proc`: a fact about the driver that ran, independent of what the
/// relay says of itself. Only meaningful for a child process: this test process runs other
/// suites' relays at the same time. `-1` when `/proc/PID/fd` could not be listed, so that no
/// comparison (`== 0` for the portable driver among them) passes on a failed read.
func openRings(pid: Int32) -> Int { (try? readOpenRings(pid: pid)) ?? -1 }

/// `openRings`, or the error that kept `/proc/PID/fd` from being listed.
func readOpenRings(pid: Int32) throws -> Int {
    try fileDescriptorLinks(pid: pid).filter { $0 == "anon_inode:[io_uring]" }.count
}

/// What each descriptor of process `pid` points to, read from `/proc/PID/fd` (the listing tried
/// three times: a failed listing says nothing about the relay; a descriptor closed between the
/// listing and its readlink is left out).
func fileDescriptorLinks(pid: Int32) throws -> [String] {
    let directory = "/proc/\(pid)/fd"
    var attempt = 1
    while true {
        do {
            return try FileManager.default.contentsOfDirectory(atPath: directory).compactMap {
                try? FileManager.default.destinationOfSymbolicLink(atPath: "\(directory)/\($0)")
            }
        } catch where attempt < 3 {
            attempt += 1
        }
    }
}

/// Checks that a started child relay runs the driver `choice` asks for: its start-up log
/// names it (`io_backend=uring`, `io_backend=portable …`), and it holds an io_uring open
/// exactly when that driver is io_uring (each worker keeps its ring until it stops).
func expectDriverRan(_ choice: IOBackendChoice, pid: Int32, log: String, sourceLocation: SourceLocation = #_sourceLocation) {
    let driver = driverExpected(for: choice)
    let line = log.split(separator: "\n").first { $0.contains("io_backend=") }.map(String.init)
    #expect(line?.contains("io_backend=\(driver.rawValue)") == true, "start-up log: \(line ?? log)", sourceLocation: sourceLocation)
    let rings: Int
    do { rings = try readOpenRings(pid: pid) } catch {
        Issue.record("could not list /proc/\(pid)/fd: \(error)", sourceLocation: sourceLocation)
        return
    }
    #expect((rings > 0) == (driver == .uring), "\(rings) io_uring instances open under the \(driver) driver (\(String(describing: try? fileDescriptorLinks(pid: pid))))", sourceLocation: sourceLocation)
}

/// Checks the exit (or `SIGUSR1`) report names the driver `choice` asks for.
func expectReportNames(_ choice: IOBackendChoice, in log: String, sourceLocation: SourceLocation = #_sourceLocation) {
    let driver = driverExpected(for: choice)
    let lines = log.split(separator: "\n").filter { $0.hasPrefix("statsrelay.io_backend{") }
    #expect(lines.last == "statsrelay.io_backend{driver=\"\(driver.rawValue)\"} 1", "\(lines)", sourceLocation: sourceLocation)
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

    /// A backend on 127.0.0.1 whose port is none of `ports`: beside a TCP backend, whose port
    /// the kernel picks apart from a UDP one's, two backends at one host and port are refused
    /// whatever their transports.
    static func avoiding(_ ports: [UInt16]) throws -> TestBackend {
        for _ in 0..<50 {
            let backend = try TestBackend()
            if !ports.contains(backend.address.port) { return backend }
        }
        throw Errno(rawValue: EADDRINUSE)
    }
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
    try collect(from: backends, seconds: seconds, settleMilliseconds: settleMilliseconds) { $0.totalLines >= expectedLines }
}

/// Receives from every backend until `complete` holds of what arrived, or `seconds` pass, then
/// keeps listening until `settle` milliseconds pass with nothing more, to catch any duplicate or
/// line that should not come.
func collect(
    from backends: [TestBackend], seconds: Double = 15, settleMilliseconds: Int32 = 100, until complete: (Received) -> Bool
) throws -> Received {
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
        if settling || complete(received) {
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

/// Sends `batch(flow)` for `flows` flows, each from a fresh socket, from a thread pinned to
/// `cpu`: on loopback the kernel receives each datagram on the sender's CPU (no RPS on `lo`), so
/// this is how a test makes datagrams arrive on a chosen CPU. Returns every line sent.
func sendPinned(to cpu: Int, flows: Int, to address: SocketAddress, batch: @escaping @Sendable (Int) -> [String]) throws -> [String] {
    let outcome = Mutex<Result<[String], any Error>>(.success([]))
    let thread = try WorkerThread(name: "test-cpu\(cpu)", cpu: cpu) { pinning in
        outcome.withLock { result in
            result = Result {
                if let pinning { throw pinning }
                var sent: [String] = []
                for flow in 0..<flows {
                    try send(batch(flow), to: address)
                    sent += batch(flow)
                }
                return sent
            }
        }
    }
    thread.join()
    return try outcome.withLock { try $0.get() }
}

/// The metric name of a StatsD line: the bytes before the first `:`.
func metricName(of line: String) -> String { String(line.prefix { $0 != ":" }) }

/// The backend index the Go StatsRelay would route `line` to (from `ReferenceRouting`, not the
/// relay's router).
func expectedBackend(of line: String, backends: Int) -> Int {
    ReferenceRouting.primary(metricName(of: line), backends: backends)
}

/// The CPU for the next single-worker relay started in this process, in turn over the CPUs
/// allowed. A relay pins worker i to the i-th allowed CPU by default, so every one-worker relay
/// of the suites running side by side would otherwise share the first CPU.
func nextTestCPU() -> Int {
    let cpus = WorkerThread.allowedCPUs
    guard !cpus.isEmpty else { return 0 }
    return cpus[testCPUTurn.add(1, ordering: .relaxed).oldValue % cpus.count]
}

private let testCPUTurn = Atomic<Int>(0)

/// A relay running in this process on 127.0.0.1 with a kernel-chosen port.
final class InProcessRelay: @unchecked Sendable {
    let relay: Relay
    let address: SocketAddress

    /// Starts a relay on `driver` (no default: every kernel test names the driver it runs)
    /// and checks that driver is the one running.
    init(
        backends: [TestBackend], driver: IOBackendChoice, configure: (inout RelayConfiguration) -> Void = { _ in },
        sourceLocation: SourceLocation = #_sourceLocation
    ) throws {
        var configuration = RelayConfiguration(backends: try backends.map { try BackendAddress(parsing: $0.spec) })
        configuration.bindHost = "127.0.0.1"
        configuration.port = 0
        configuration.threads = 1
        configure(&configuration)
        configuration.ioBackend = driver
        if configuration.threads == 1 && configuration.cpus == nil { configuration.cpus = [nextTestCPU()] }
        relay = try Relay(configuration: configuration, logger: .init(label: "test"))
        address = try relay.start().listen
        #expect(relay.driver == driverExpected(for: driver), "the relay runs \(relay.driver)", sourceLocation: sourceLocation)
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

/// The `statsrelay` executable where a process of another user can run it: the one built, when
/// every directory above it lets others through; else a copy, made once, in a directory of its
/// own under the temporary directory (a clone under `/root`, mode 700, or a `.build` made 750).
let statsrelayExecutableForOtherUsers: Result<URL, any Error> = Result {
    let built = statsrelayExecutable
    var directory = built.deletingLastPathComponent()
    var reachable = true
    while directory.path != "/" {
        var status = stat()
        guard stat(directory.path, &status) == 0 else { reachable = false; break }
        if status.st_mode & S_IXOTH == 0 { reachable = false; break }
        directory.deleteLastPathComponent()
    }
    if reachable { return built }
    let temporary = FileManager.default.temporaryDirectory
    // The copies of test processes that have ended go first (one per process, ~50 MB).
    for name in (try? FileManager.default.contentsOfDirectory(atPath: temporary.path)) ?? []
    where name.hasPrefix("statsrelay-tests-") {
        if let pid = Int32(name.dropFirst("statsrelay-tests-".count)), kill(pid, 0) != 0 && errno == ESRCH {
            try? FileManager.default.removeItem(at: temporary.appendingPathComponent(name))
        }
    }
    let copyDirectory = temporary.appendingPathComponent("statsrelay-tests-\(getpid())")
    try? FileManager.default.removeItem(at: copyDirectory)
    try FileManager.default.createDirectory(at: copyDirectory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
    let copy = copyDirectory.appendingPathComponent("statsrelay")
    try FileManager.default.copyItem(at: built, to: copy)
    try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: copy.path)
    return copy
}

/// Text appended from one thread and read from another.
final class LockedText: Sendable {
    private let text = Mutex("")
    func withLock<Result: Sendable>(_ body: (inout String) -> Result) -> Result { text.withLock { body(&$0) } }
}

/// Reads a pipe on a thread of its own until every writer has closed it, keeping the text.
///
/// Not Foundation's `readabilityHandler`: a handler block still running when it is removed
/// appends its data after the reader has looked, and a report read at exit could go missing.
final class PipeReader: Sendable {
    let text = LockedText()
    private let ended = DispatchSemaphore(value: 0)

    /// Starts reading `handle`; `onChange` runs after each piece is appended.
    init(_ handle: FileHandle, onChange: @escaping @Sendable () -> Void = {}) {
        let thread = Thread { [text, ended] in
            while true {
                let data = handle.availableData  // blocks until data, or empty at the end
                if data.isEmpty { break }
                text.withLock { $0 += String(decoding: data, as: UTF8.self) }
                onChange()
            }
            ended.signal()
        }
        thread.start()
    }

    /// Waits until the pipe has ended, at most `seconds`; whether it has.
    func waitForEnd(seconds: Double) -> Bool { ended.wait(timeout: .now() + seconds) == .success }
}

/// A `statsrelay` child process whose standard error is watched for events.
final class RelayProcess: @unchecked Sendable {  // the log buffer is guarded by `log`
    let process = Process()
    private var reader: PipeReader?
    private var log: LockedText { reader?.text ?? LockedText() }
    private let logChanged = DispatchSemaphore(value: 0)
    private let exited = DispatchSemaphore(value: 0)
    private let stdoutPipe = Pipe()
    private let stderrPipe = Pipe()

    private let reaped = Atomic<Bool>(false)
    /// The `--io-backend` the relay was started with.
    let driver: IOBackendChoice
    /// Whether `listenAddress` and `waitForExit` check the driver that ran.
    private let checksDriver: Bool

    /// Starts `statsrelay --io-backend driver` with `arguments`, under `launcher` when given (a
    /// command that ends by executing its last arguments, e.g. one that restricts the child
    /// first: see `RelayLauncher`).
    ///
    /// The driver has no default: every test says which one it runs. Once the relay listens
    /// (`listenAddress()`) and once it has exited 0 (`waitForExit`), the driver that ran is
    /// checked, except under `auto`, where the test checks what the ladder chose.
    ///
    /// - Parameters:
    ///   - checksDriver: `false` where the launched process is not the relay itself (a tracer
    ///     forks it) or its standard error is closed: the test then checks the driver itself.
    ///   - executable: the relay to run (default: the one built beside this test bundle).
    init(
        driver: IOBackendChoice, launcher: [String] = [], checksDriver: Bool = true, executable: URL = statsrelayExecutable,
        _ arguments: [String]
    ) throws {
        self.driver = driver
        self.checksDriver = checksDriver && driver != .auto
        let relayArguments = adminOff(["--io-backend", driver.rawValue] + arguments)
        if let program = launcher.first {
            process.executableURL = URL(fileURLWithPath: program)
            process.arguments = Array(launcher.dropFirst()) + [executable.path] + relayArguments
        } else {
            process.executableURL = executable
            process.arguments = relayArguments
        }
        process.standardOutput = stdoutPipe
        process.standardError = stderrPipe
        process.terminationHandler = { [exited] _ in exited.signal() }
        try process.run()
        reader = PipeReader(stderrPipe.fileHandleForReading) { [logChanged] in logChanged.signal() }
    }

    /// A relay a failed test left running is killed, not left behind.
    deinit {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
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

    /// The port from the `listening on HOST:PORT` start-up line; checks the driver that runs.
    func listenAddress(sourceLocation: SourceLocation = #_sourceLocation) throws -> SocketAddress {
        #expect(waitForLog("listening on "), "relay did not start: \(standardError)", sourceLocation: sourceLocation)
        let line = try #require(standardError.split(separator: "\n").first { $0.contains("listening on ") }, sourceLocation: sourceLocation)
        let spec = try #require(line.split(separator: "listening on ").last, sourceLocation: sourceLocation)
        // The first listener's (TCP listeners, `tcp:ADDR`, follow the datagram ones).
        let first = spec.split(separator: ", ").first ?? spec
        let port = try #require(first.split(separator: ":").last.flatMap { UInt16($0) }, sourceLocation: sourceLocation)
        if checksDriver { expectDriverRan(driver, pid: process.processIdentifier, log: standardError, sourceLocation: sourceLocation) }
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
    /// Later calls return the same status at once. After an exit 0, checks that the exit
    /// report names the driver the relay was told to use.
    func waitForExit(seconds: Double = 10, sourceLocation: SourceLocation = #_sourceLocation) -> Int32? {
        if reaped.load(ordering: .acquiring) { return process.terminationStatus }
        if exited.wait(timeout: .now() + seconds) == .timedOut {
            kill(process.processIdentifier, SIGKILL)
            return nil
        }
        // The child has exited, so its end of the pipe is closed: the reader reaches the end.
        #expect(reader?.waitForEnd(seconds: 5) == true, "standard error did not end", sourceLocation: sourceLocation)
        reaped.store(true, ordering: .releasing)
        if process.terminationReason == .exit && process.terminationStatus == 0 && checksDriver {
            expectReportNames(driver, in: standardError, sourceLocation: sourceLocation)
        }
        return process.terminationStatus
    }

    /// Whether the process exits within `seconds`, waiting for its exit and never killing it
    /// (`waitForExit` then returns its status at once).
    func exits(within seconds: Double) -> Bool {
        if reaped.load(ordering: .acquiring) { return true }
        guard exited.wait(timeout: .now() + seconds) == .success else { return false }
        exited.signal()  // left for `waitForExit`
        return true
    }

    /// A counter's value from the report printed last (at exit, once the relay has exited).
    func counter(_ name: String) -> UInt64? {
        standardError.split(separator: "\n").last { $0.hasPrefix(name + " ") }
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

    /// Starts sending `datagram(index)` (by default the one line `steady.<index % 1000>:1|c`)
    /// for `index` in `0..<maxDatagrams`, from its own socket on 127.0.0.1.
    init(
        to address: SocketAddress, maxDatagrams: Int,
        datagram: @escaping @Sendable (Int) -> [UInt8] = { Array("steady.\($0 % 1000):1|c".utf8) }
    ) throws {
        let socket = SocketBox(try UDPSocket.bound(to: SocketAddress(numericHost: "127.0.0.1", port: 0)!))
        thread = WorkerThreadHandle(try WorkerThread(name: "test-sender", cpu: nil) { [shared] _ in
            for index in 0..<maxDatagrams where shared.running.load(ordering: .relaxed) {
                try? socket.socket.send(datagram(index), to: address)
                shared.sent.add(1, ordering: .relaxed)
            }
        })
    }

    /// How many datagrams went out so far (every one after `stop()`).
    var sent: Int { shared.sent.load(ordering: .relaxed) }

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

/// `--threads 2` for a child relay: with fewer than two CPUs allowed, `--cpus` names two so the
/// relay accepts it (a worker that cannot be pinned runs unpinned).
var twoWorkerArguments: [String] {
    WorkerThread.allowedCPUs.count >= 2 ? ["--threads", "2"] : ["--threads", "2", "--cpus", "0-1"]
}

/// What `read` gives once two readings in a row agree, at most five readings (else the last).
///
/// A `/proc/net` table comes a page per read, each read finding its place again by counting
/// rows: a socket that another test opens or closes meanwhile shifts the rows, and a row can be
/// skipped or read twice (seen in full parallel runs). What the callers read stands still (a
/// stopped relay's queues, a socket nothing sends to any more); where something still changes
/// it, the last reading is returned.
func agreedReading<Value: Equatable>(_ read: () -> Value) -> Value {
    var previous = read()
    for _ in 0..<4 {
        let reading = read()
        if reading == previous { return reading }
        previous = reading
    }
    return previous
}

/// The receive-queue bytes of every IPv4 UDP socket bound to `port`, from `/proc/net/udp`,
/// read until two readings agree (`agreedReading`).
func udpReceiveQueues(port: UInt16) -> [Int] {
    agreedReading { udpReceiveQueuesOnce(port: port) }
}

/// One reading of `udpReceiveQueues`.
private func udpReceiveQueuesOnce(port: UInt16) -> [Int] {
    // Read to the end: a single read of a /proc table returns only its first page.
    guard let data = FileHandle(forReadingAtPath: "/proc/net/udp")?.readDataToEndOfFile(),
          case let table = String(decoding: data, as: UTF8.self) else { return [] }
    return table.split(separator: "\n").dropFirst().compactMap { row in
        let fields = row.split(separator: " ")
        guard fields.count > 4, let local = fields[1].split(separator: ":").last, UInt16(local, radix: 16) == port,
              let queue = fields[4].split(separator: ":").last else { return nil }
        return Int(queue, radix: 16)
    }
}

/// Sends `batch(flow)` from a fresh socket (a new flow: `SO_REUSEPORT` hashes each to one
/// worker's socket) for flow 0, 1, … until every one of the `workers` listening sockets on
/// `address`'s port holds datagrams, at most `maxFlows` flows (each flow lands on either of two
/// sockets with even odds: 64 leave a chance of 2⁻⁶³ that one socket got none).
///
/// The relay must be stopped (`RelayProcess.suspend()`), or its workers empty the sockets as
/// the datagrams arrive. Returns every line sent, flow by flow, and the queued bytes per socket.
func spreadOverWorkers(
    _ address: SocketAddress, workers: Int = 2, maxFlows: Int = 64, batch: (Int) -> [String]
) throws -> (lines: [[String]], queues: [Int]) {
    var lines: [[String]] = []
    while lines.count < maxFlows && udpReceiveQueues(port: address.port).filter({ $0 > 0 }).count < workers {
        let flow = batch(lines.count)
        try send(flow, to: address)
        lines.append(flow)
    }
    return (lines, udpReceiveQueues(port: address.port))
}

/// How much longer than its `--shutdown-timeout` a stop may take as a test sees it: signal
/// delivery, joining threads, printing the report, the process exit, on a loaded 2-CPU machine
/// (with other builds beside it, at five times more runnable threads than CPUs, a 15 ms stop
/// of the io_uring driver was seen to take 1.36 s from SIGTERM to exit).
/// A bound on the documented deadline, not a speed: a stop that overran its budget by this
/// much would be a broken promise.
let stopSlackSeconds = 2.0

/// The report counters that together count the forwarded lines a stop could not confirm (still
/// in a batch, in flight, or sent without 200 ms to wait for a refusal). One place to follow a
/// rename or split of these counters.
let unconfirmedAtExitNames = ["statsrelay.lines_unconfirmed_at_exit"]
/// The same counters in `RelayCounters`.
let unconfirmedAtExitCounters: [RelayCounter] = [.linesUnconfirmedAtExit]

/// The forwarded lines a stop could not confirm, from a printed report.
func unconfirmedAtExit(in report: [String: UInt64]) -> UInt64 {
    unconfirmedAtExitNames.reduce(0) { $0 + (report[$1] ?? 0) }
}

/// The forwarded lines a stop could not confirm, from a relay's counters.
func unconfirmedAtExit(in counters: RelayCounters) -> UInt64 {
    unconfirmedAtExitCounters.reduce(0) { $0 + counters[$1] }
}

extension RelayProcess {
    /// Sends `SIGUSR1` and waits, at most `seconds`, for the whole report it prints; returns
    /// that report's counters (`nil` if none came).
    func liveReport(seconds: Double = 3) -> [String: UInt64]? {
        /// Complete report ends seen so far: the last line of a report is the log's own errors.
        func ends(_ log: String) -> Int {
            log.split(separator: "\n", omittingEmptySubsequences: false).dropLast()
                .filter { $0.hasPrefix("statsrelay.log_write_errors ") }.count
        }
        let before = ends(standardError)
        signal(SIGUSR1)
        guard poll(seconds: seconds, { ends(standardError) > before }) else { return nil }
        let log = standardError
        guard let notice = log.range(of: "live counters", options: .backwards) else { return nil }
        return lastReport(in: String(log[notice.upperBound...]))
    }
}
