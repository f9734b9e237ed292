@testable import RelayKernel
import Foundation
import Glibc
import Testing
@testable import UringRelay

/// A stop is bounded by `--shutdown-timeout` whatever the clients do, and what it leaves behind
/// is counted (docs/operations.md, "Stopping"); a backend removed from the pool takes its held
/// lines with it, counted.
@Suite("A stop within its budget, and the leftovers counted", .serialized, .timeLimit(.minutes(1)), .onOwnThread)
struct StopBudgetTests {
    @Test("clients keep the socket busy and a backend is held: the stop ends within --shutdown-timeout and counts datagrams left, lines unconfirmed and lines still held",
          arguments: ioDrivers)
    func stopUnderLoadWithinBudget(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let timeout: UInt64 = 300_000_000
        let harness = try HealthHarness(driver: driver, policy: .hold) { $0.shutdownTimeoutNanoseconds = timeout }
        harness.healthPorts[0].close()
        #expect(harness.wait(for: 0, .down))
        // Four clients sending as fast as they can (a third of the names go to the held
        // backend): more than the workers take, so the socket is full through the whole stop
        // (two were not always, on a host busy with other suites' relays). One-line datagrams
        // keep each of the worker's turns short.
        let floods = try (0..<4).map { _ in try SteadySender(to: harness.address, maxDatagrams: 3_000_000) }
        defer { for flood in floods { flood.stop() } }
        // Traffic is flowing and lines for the down backend are held (each worker publishes its
        // counters every 100 ms while busy).
        let holding = poll(seconds: 10) { harness.relay.liveCounters()[.linesHeld] > 0 }
        try #require(holding, "no line was held: \(harness.relay.liveCounters()[.linesHeld])")

        let started = MonotonicClock.nanoseconds()
        harness.relay.stop()
        let (counters, failures) = harness.relay.wait()
        let stopSeconds = Double(MonotonicClock.nanoseconds() - started) / 1e9
        for flood in floods { flood.stop() }
        let offered = floods.reduce(0) { $0 + $1.sent }
        #expect(failures.isEmpty)
        #expect(stopSeconds < Double(timeout) / 1e9 + stopSlackSeconds, "the stop took \(stopSeconds) s of a \(Double(timeout) / 1e9) s budget")

        // Datagrams: the clients outlasted the drain, so some were still queued when receiving
        // stopped, and those are counted, not dropped silently.
        #expect(counters[.datagramsDroppedAtExit] > 0, "no datagram left at exit was counted")
        #expect(counters[.datagramsReceived] + counters[.datagramsDroppedAtExit] + counters[.datagramsDroppedKernel]
                <= UInt64(offered))
        // Lines: every one received was forwarded, and every one forwarded ended as sent, still
        // held, or unconfirmed; the held backend got nothing, and nothing was replayed.
        #expect(counters[.linesReceived] == counters[.linesForwarded])
        try #require(counters[.linesDroppedHoldOverflow] == 0, "the hold overflowed: the identity below would not hold")
        #expect(counters[.linesReplayed] == 0)
        #expect(counters[.linesHeld, backend: 0] > 0)
        #expect(counters[.linesDroppedHeldAtExit] == counters[.linesHeld, backend: 0], "every held line is counted at exit")
        #expect(counters[.linesSent, backend: 0] == 0)
        let sent = counters[.linesSent, backend: 1] + counters[.linesSent, backend: 2]
        let failed = counters[.linesDroppedRefused] + counters[.linesDroppedSendError] + counters[.linesDroppedUnreachable]
        let unconfirmed = unconfirmedAtExit(in: counters)
        #expect(failed == 0)
        #expect(sent + unconfirmed + counters[.linesDroppedHeldAtExit] == counters[.linesForwarded],
                "sent \(sent) + unconfirmed \(unconfirmed) + held \(counters[.linesDroppedHeldAtExit]) of \(counters[.linesForwarded])")
        // What the live backends received: every line counted as sent, and no more than those
        // plus the unconfirmed (some of which were never sent).
        let received = try collect(from: Array(harness.backends[1...]), expectedLines: Int(sent), seconds: 10)
        #expect(UInt64(received.totalLines) >= sent && UInt64(received.totalLines) <= sent + unconfirmed,
                "received \(received.totalLines), sent \(sent), unconfirmed \(unconfirmed)")
        let late = try collect(from: [harness.backends[0]], expectedLines: 0, seconds: 0.2)
        #expect(late.totalLines == 0, "the held backend received lines")
    }

    @Test("a down backend removed from the pool under hold: its held lines are dropped and counted in lines_dropped.backend_removed, never sent",
          arguments: ioDrivers)
    func removedBackendsHeldLinesCounted(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let harness = try HealthHarness(driver: driver, policy: .hold)
        harness.healthPorts[0].close()
        #expect(harness.wait(for: 0, .down))
        let sent = lines(count: 600, prefix: "removed")
        let toRemoved = sent.filter { expectedBackend(of: $0, backends: 3) == 0 }
        try send(sent, to: harness.address)
        let others = try collect(from: Array(harness.backends[1...]), expectedLines: sent.count - toRemoved.count)
        #expect(others.totalLines == sent.count - toRemoved.count)
        let held = poll(seconds: 10) { harness.relay.liveCounters()[.linesHeld, backend: 0] == UInt64(toRemoved.count) }
        #expect(held, "held \(harness.relay.liveCounters()[.linesHeld, backend: 0]) of \(toRemoved.count)")

        let remaining = try harness.backends[1...].map { try BackendAddress(parsing: $0.spec) }
        try harness.relay.replaceBackends(remaining)
        let changed = poll(seconds: 10) { harness.relay.liveCounters()[.poolChanges] == 1 }
        #expect(changed, "the pool change was not applied")
        // The backend is gone: reopening its health port brings nothing back to it.
        try harness.healthPorts[0].reopen()
        let counters = harness.stop()
        #expect(counters[.linesDroppedBackendRemoved] == UInt64(toRemoved.count))
        #expect(counters[.linesDroppedHeldAtExit] == 0)
        #expect(counters[.linesReplayed] == 0)
        // The removed backend keeps its counters in the report, by identity.
        #expect(counters[.linesHeld, backend: harness.backends[0].spec] == UInt64(toRemoved.count))
        #expect(counters[.linesSent, backend: harness.backends[0].spec] == 0)
        let late = try collect(from: [harness.backends[0]], expectedLines: 0, seconds: 0.2)
        #expect(late.totalLines == 0, "the removed backend received lines")
    }
}
