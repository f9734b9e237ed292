@testable import RelayKernel
import Glibc
import Testing
@testable import UringRelay

/// An idle worker still publishes its counters (its heartbeat, which `/healthz` reads) at least
/// every 250 ms, on both drivers.
@Suite("Worker heartbeat", .timeLimit(.minutes(1)), .onOwnThread)
struct HeartbeatTests {
    @Test("an idle worker publishes at least every 250 ms: three or more publications in 1.2 s without a datagram (an idle wait of a second would allow two), and /healthz finds it fresh", arguments: ioDrivers)
    func idleHeartbeat(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let relay = try InProcessRelay(backends: [backend], driver: driver)
        #expect(relay.relay.driver == driver)
        var stamps: Set<UInt64> = []
        let first = try #require(relay.relay.workerStatus.publishedAt.first)
        let end = MonotonicClock.nanoseconds() + 1_200_000_000
        // Observing a window of time, not waiting for an event: the count is what is asserted.
        while MonotonicClock.nanoseconds() < end {
            if let stamp = relay.relay.workerStatus.publishedAt.first, stamp != first { stamps.insert(stamp) }
            usleep(5_000)
        }
        #expect(stamps.count >= 3, "\(stamps.count) publications in 1.2 s of idleness")
        let status = relay.relay.workerStatus
        let verdict = HealthVerdict.evaluate(
            started: status.started, stopping: status.stopping, expectedWorkers: 1, publishedAt: status.publishedAt,
            failures: status.failures, now: MonotonicClock.nanoseconds())
        #expect(verdict == HealthVerdict(healthy: true, reason: "ok"))
        let counters = relay.stop()
        #expect(counters[.datagramsReceived] == 0, "the worker was not idle")
    }
}
