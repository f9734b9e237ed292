@testable import RelayKernel
import Dispatch
import Foundation
import Glibc
import Synchronization
import Testing
@testable import UringRelay

/// Pool publications that keep coming while a worker makes its final flush wake it once each:
/// the driver's one control event is reset every time it fires, whatever listeners have closed
/// (the portable driver once lost track of its pool event's place in the poll set when its
/// listeners closed, so the event stayed readable and `ppoll` returned at once every turn).
@Suite("Final flush: pool publications do not spin a stopping worker", .serialized, .timeLimit(.minutes(1)), .onOwnThread)
struct FinalFlushWakeupTests {
    /// User plus system CPU time of this process's thread named `name`, in clock ticks, or
    /// `nil` when no such thread runs.
    static func cpuTicks(ofThreadNamed name: String) -> Int? {
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? []
        for task in tasks {
            guard let comm = try? String(contentsOfFile: "/proc/self/task/\(task)/comm", encoding: .utf8),
                  comm.trimmingCharacters(in: .whitespacesAndNewlines) == name,
                  let stat = try? String(contentsOfFile: "/proc/self/task/\(task)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { continue }
            // After the name: state (field 3) … utime (14) and stime (15).
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            guard fields.count > 12, let user = Int(fields[11]), let system = Int(fields[12]) else { return nil }
            return user + system
        }
        return nil
    }

    /// What the worker thread and the test share.
    final class WorkerLink: Sendable {
        let listen = Mutex<SocketAddress?>(nil)
        let counters = Mutex<RelayCounters?>(nil)
        let started = DispatchSemaphore(value: 0)
        let publishing = Atomic<Bool>(true)
    }

    /// Opens `Driver` on the calling thread and runs it, handing its first listener's address
    /// and, at the end, its counters out.
    static func run<Driver: IODriver & ~Copyable>(_: Driver.Type, settings: WorkerSettings, control: WorkerControl, shared: WorkerLink) {
        let driver: WorkerLoop<Driver>
        do { driver = try WorkerLoop<Driver>(settings: settings, control: control) } catch {
            shared.started.signal()
            return
        }
        shared.listen.withLock { $0 = driver.facts.listen }
        shared.started.signal()
        let result = driver.run()
        shared.counters.withLock { $0 = result.counters }
    }

    @Test("a stopping worker waiting for its sends' confirmation while pools are published every 2 ms uses a small part of a CPU", arguments: ioDrivers)
    func publicationsDuringFinalFlush(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        var configuration = RelayConfiguration(backends: [try BackendAddress(parsing: backend.spec)])
        configuration.threads = 1
        let routing = RoutingState(addresses: [backend.address])
        let settings = WorkerSettings(
            configuration: configuration, listeners: [SocketAddress(numericHost: "127.0.0.1", port: 0)!], routing: routing,
            holdBudget: HoldBudget(totalBytes: 1 << 20, replayBytesPerSecond: 1 << 20, workers: 1))
        let control = try WorkerControl()
        let shared = WorkerLink()
        let name = driver == .uring ? "spin-uring" : "spin-portable"
        let worker = WorkerThreadHandle(try WorkerThread(name: name, cpu: nextTestCPU()) { _ in
            switch driver {
            case .portable: Self.run(PortableDriver.self, settings: settings, control: control, shared: shared)
            case .uring, .auto: Self.run(IOUringDriver.self, settings: settings, control: control, shared: shared)
            }
        })
        shared.started.wait()
        let address = try #require(shared.listen.withLock { $0 })

        let lines = (0..<20).map { "flush.\($0):1|c" }
        try send([lines.joined(separator: "\n")], to: address)
        let received = try collect(from: [backend], expectedLines: lines.count, settleMilliseconds: 10)
        #expect(received.lines[0].sorted() == lines.sorted())
        // Sent, not yet confirmed (200 ms): the stop's final flush waits for the confirmation.
        let before = try #require(Self.cpuTicks(ofThreadNamed: name))
        let publisher = WorkerThreadHandle(try WorkerThread(name: "spin-publisher", cpu: nil) { _ in
            while shared.publishing.load(ordering: .acquiring) {
                routing.publish(down: [false], addresses: [backend.address])
                usleep(2_000)  // the publication pace, not synchronisation
            }
        })
        control.send(.stop)
        var last = before
        while let ticks = Self.cpuTicks(ofThreadNamed: name) {
            last = ticks
            usleep(5_000)  // sampling the thread's CPU time until it exits
        }
        worker.join()
        shared.publishing.store(false, ordering: .releasing)
        publisher.join()
        let result = try #require(shared.counters.withLock { $0 })
        #expect(result[.linesSent, backend: 0] == UInt64(lines.count), "the flush did not wait for the confirmation: the test proves nothing")
        // The flush lasts some 250 ms: a spinning worker burns about all of it (25 ticks of 10 ms).
        #expect(last - before < 10, "the stopping worker used \(last - before) ticks of CPU")
    }
}
