@testable import RelayKernel
import Dispatch
import Foundation
import Glibc
import Synchronization
import Testing
@testable import UringRelay

/// Where a `FaultyTransport` fails, set by the test that owns the worker.
final class FaultSwitch: Sendable {
    /// The next wait throws `FaultyTransport.injected`.
    let failWait = Atomic<Bool>(false)
    /// Opening throws `FaultyTransport.injected` once the driver's own resources are open.
    let failOpen: Bool

    init(failOpen: Bool = false) { self.failOpen = failOpen }

    /// The switches by the control channel of the worker they belong to (a transport is opened
    /// from the worker's state, which carries its control channel).
    static let byControl = Mutex<[ObjectIdentifier: FaultSwitch]>([:])

    static func register(_ fault: FaultSwitch, for control: WorkerControl) {
        byControl.withLock { $0[ObjectIdentifier(control)] = fault }
    }

    static func forget(_ control: WorkerControl) {
        _ = byControl.withLock { $0.removeValue(forKey: ObjectIdentifier(control)) }
    }
}

/// A real driver (`Inner`) run by the real turn skeleton, that fails where its `FaultSwitch`
/// says: a failure injected from outside, since no honest fault reaches io_uring's wait.
struct FaultyTransport<Inner: IODriver & ~Copyable>: ~Copyable, IODriver {
    /// The error injected.
    static var injected: SystemCallError { SystemCallError("injected wait", "test", Errno(rawValue: EIO)) }

    private var inner: Inner
    private let fault: FaultSwitch

    init(opening worker: borrowing WorkerState) throws(SystemCallError) {
        let fault = FaultSwitch.byControl.withLock { $0[ObjectIdentifier(worker.control)] } ?? FaultSwitch()
        let inner = try Inner(opening: worker)
        // `inner` (io_uring: a ring and its buffer ring) goes away here, in its own order.
        if fault.failOpen { throw Self.injected }
        self.inner = inner
        self.fault = fault
    }

    func facts(_ worker: borrowing WorkerState) -> WorkerFacts { inner.facts(worker) }

    mutating func wait(_ worker: inout WorkerState, now: UInt64) throws(SystemCallError) {
        if fault.failWait.load(ordering: .acquiring) { throw Self.injected }
        try inner.wait(&worker, now: now)
    }

    mutating func receive(_ worker: inout WorkerState, now: UInt64) -> Bool { inner.receive(&worker, now: now) }
    var unrelayedListener: UInt32? { inner.unrelayedListener }
    mutating func listenersChanged(_ worker: borrowing WorkerState) { inner.listenersChanged(worker) }
    mutating func stopReceiving(_ worker: inout WorkerState) { inner.stopReceiving(&worker) }
    mutating func send(_ worker: inout WorkerState, now: UInt64) { inner.send(&worker, now: now) }
    var sendsPending: Int { inner.sendsPending }
    func isIdle(_ worker: borrowing WorkerState) -> Bool { inner.isIdle(worker) }
    mutating func lastCompletions(_ worker: inout WorkerState, now: UInt64) { inner.lastCompletions(&worker, now: now) }
    mutating func finish(_ worker: inout WorkerState) -> (unrelayed: Int, inFlight: Int) { inner.finish(&worker) }
    consuming func close(_ worker: inout WorkerState) { inner.close(&worker) }
}

@Suite("A worker tears down in one order on every path and keeps its counters", .serialized, .timeLimit(.minutes(1)), .onOwnThread)
struct WorkerTeardownTests {
    /// What the worker thread and the test share.
    final class WorkerLink: Sendable {
        let facts = Mutex<WorkerFacts?>(nil)
        let openError = Mutex<SystemCallError?>(nil)
        let exit = Mutex<WorkerExit?>(nil)
        let started = DispatchSemaphore(value: 0)
        /// Signalled once `run` returned (before the thread ends).
        let ended = DispatchSemaphore(value: 0)
    }

    /// One worker's settings: listening on `listen`, relaying to `backend`.
    static func settings(_ backend: TestBackend, listen: SocketAddress) throws -> WorkerSettings {
        var configuration = RelayConfiguration(backends: [try BackendAddress(parsing: backend.spec)])
        configuration.threads = 1
        return WorkerSettings(
            configuration: configuration, listeners: [listen], routing: RoutingState(addresses: [backend.address]),
            holdBudget: HoldBudget(totalBytes: 1 << 20, replayBytesPerSecond: 1 << 20, workers: 1))
    }

    /// Opens a worker on `Driver` (behind `FaultyTransport`) on the calling thread and runs it.
    static func run<Driver: IODriver & ~Copyable>(_: Driver.Type, settings: WorkerSettings, control: WorkerControl, link: WorkerLink) {
        let worker: WorkerLoop<FaultyTransport<Driver>>
        do throws(SystemCallError) { worker = try WorkerLoop(settings: settings, control: control) } catch {
            link.openError.withLock { $0 = error }
            link.started.signal()
            return
        }
        link.facts.withLock { $0 = worker.facts }
        link.started.signal()
        let exit = worker.run()
        link.exit.withLock { $0 = exit }
        link.ended.signal()
    }

    /// Starts a worker thread on `driver` and waits until it has opened (or failed to).
    static func start(_ driver: IOBackendChoice, settings: WorkerSettings, control: WorkerControl, link: WorkerLink) throws -> WorkerThreadHandle {
        let thread = WorkerThreadHandle(try WorkerThread(name: "teardown-\(driver.rawValue)", cpu: nextTestCPU()) { _ in
            switch driver {
            case .portable: Self.run(PortableDriver.self, settings: settings, control: control, link: link)
            case .uring, .auto: Self.run(IOUringDriver.self, settings: settings, control: control, link: link)
            }
        })
        link.started.wait()
        return thread
    }

    /// Whether `address` can be bound without `SO_REUSEPORT` within 2 s: no socket holds it any
    /// more. A ring that exits with a receive still armed (a failed wait) lets the socket go
    /// once the kernel's exit work for the ring has run, after `io_uring_queue_exit` returned:
    /// no event tells when, so this tries again every 10 ms.
    static func isFree(_ address: SocketAddress) -> Bool {
        let deadline = MonotonicClock.nanoseconds() + 2_000_000_000
        while true {
            if (try? UDPSocket.bound(to: address)) != nil { return true }
            if MonotonicClock.nanoseconds() >= deadline { return false }
            usleep(10_000)
        }
    }

    @Test("a worker whose wait fails mid-run ends with that failure and the counts of what it relayed, and its listener closes", arguments: ioDrivers)
    func failedWait(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        // A port below the ephemeral range: once released, no other test's socket is given it.
        let settings = try Self.settings(backend, listen: SocketAddress(numericHost: "127.0.0.1", port: try unusedPort())!)
        let control = try WorkerControl()
        let fault = FaultSwitch()
        FaultSwitch.register(fault, for: control)
        defer { FaultSwitch.forget(control) }
        let link = WorkerLink()
        let thread = try Self.start(driver, settings: settings, control: control, link: link)
        let facts = try #require(link.facts.withLock { $0 }, "the worker did not open: \(String(describing: link.openError.withLock { $0 }))")
        #expect(facts.driver == driver)

        let lines = (0..<20).map { "teardown.\($0):1|c" }
        try send([lines.joined(separator: "\n")], to: facts.listen)
        let received = try collect(from: [backend], expectedLines: lines.count)
        #expect(received.lines[0].sorted() == lines.sorted())

        fault.failWait.store(true, ordering: .releasing)
        // Wakes the worker: the wait after this turn fails.
        _ = control.send(.followPool)
        try #require(link.ended.wait(timeout: .now() + 10) == .success, "the worker did not end within 10 s of its failure")
        thread.join()
        let exit = try #require(link.exit.withLock { $0 })
        #expect(exit.failure?.description == FaultyTransport<PortableDriver>.injected.description)
        #expect(exit.counters[.datagramsReceived] == 1)
        #expect(exit.counters[.linesReceived] == UInt64(lines.count))
        #expect(exit.counters[.linesForwarded] == UInt64(lines.count))
        #expect(Self.isFree(facts.listen), "the failed worker's listener still holds \(facts.listen)")
    }

    @Test("a start that fails once the driver's own resources are open reports that failure and releases the worker's listener", arguments: ioDrivers)
    func failedStart(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        // A port known before the worker binds it, so the test can see it released.
        let listen = SocketAddress(numericHost: "127.0.0.1", port: try unusedPort())!
        let settings = try Self.settings(backend, listen: listen)
        let control = try WorkerControl()
        FaultSwitch.register(FaultSwitch(failOpen: true), for: control)
        defer { FaultSwitch.forget(control) }
        let link = WorkerLink()
        let thread = try Self.start(driver, settings: settings, control: control, link: link)
        thread.join()
        #expect(link.facts.withLock { $0 } == nil)
        #expect(link.openError.withLock { $0 }?.description == FaultyTransport<PortableDriver>.injected.description)
        #expect(Self.isFree(listen), "the worker that failed to start still holds \(listen)")
    }

    @Test("the start-up probe leaves no ring open: a started relay holds exactly one io_uring per worker (none on portable)", arguments: ioDrivers)
    func probeLeavesNoRing(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let relay = try RelayProcess(driver: driver, ["--bind", "127.0.0.1", "--port", "0", "--threads", "2", backend.spec])
        _ = try relay.listenAddress()
        #expect(openRings(pid: relay.process.processIdentifier) == (driver == .uring ? 2 : 0))
        relay.signal(SIGTERM)
        #expect(relay.waitForExit() == 0)
    }

    /// The portable worker's `ppoll` fails (`EINVAL`) once the process may hold fewer
    /// descriptors than it polls (`RLIMIT_NOFILE`): a failure from outside, without injection.
    /// io_uring's wait counts no descriptors, so nothing comparable reaches it (its failure path
    /// is the same skeleton, tested above with an injected failure).
    @Test("a relay whose worker fails mid-run (ppoll: RLIMIT_NOFILE below its poll set) logs the failure, exits 70, and its report counts what that worker received", arguments: [IOBackendChoice.portable])
    func relayKeepsFailedWorkerCounters(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let relay = try RelayProcess(driver: driver, ["--bind", "127.0.0.1", "--port", "0", "--threads", "1", backend.spec])
        let address = try relay.listenAddress()
        let first = (0..<10).map { "before.\($0):1|c" }
        try send([first.joined(separator: "\n")], to: address)
        // Relayed (and so counted) before its limit is lowered.
        _ = try collect(from: [backend], expectedLines: first.count)
        let limit = try RelayProcess.runTool("/usr/bin/prlimit", ["--pid", "\(relay.process.processIdentifier)", "--nofile=1:"])
        try #require(limit.status == 0, "prlimit: \(limit.output)")
        // Its next ppoll fails: at the latest when its 1 s idle wait ends.
        #expect(relay.waitForLog("worker stopped on a driver failure"), "\(relay.standardError)")
        relay.signal(SIGTERM)
        #expect(relay.waitForExit() == 70)
        #expect(relay.standardError.contains("ppoll: Invalid argument"), "\(relay.standardError)")
        let report = lastReport(in: relay.standardError)
        #expect(report["statsrelay.datagrams_received"] == 1)
        #expect(report["statsrelay.lines_received"] == UInt64(first.count))
        #expect(report["statsrelay.lines_forwarded"] == UInt64(first.count))
    }
}

extension RelayProcess {
    /// Runs `tool` with `arguments` to completion: its status and what it printed.
    static func runTool(_ tool: String, _ arguments: [String]) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: tool)
        process.arguments = arguments
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        let printed = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: printed, as: UTF8.self))
    }
}
