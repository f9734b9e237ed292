import Foundation
import Glibc
import RelayKernel
import Testing
@testable import UringRelay

@Suite("Replay after an outage under hold", .serialized, .timeLimit(.minutes(1)), .onOwnThread)
struct ReplayTests {
    @Test("hold: the replay is paced at --replay-rate and live lines queue behind it, in order", arguments: ioDrivers)
    func pacedOrderedReplay(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let rate = 64 << 10
        let harness = try HealthHarness(driver: driver, policy: .hold) { $0.replayBytesPerSecond = rate }
        harness.healthPorts[0].close()
        #expect(harness.wait(for: 0, .down))
        let held = lines(count: 12_000, prefix: "held").filter { expectedBackend(of: $0, backends: 3) == 0 }
        let marker = lines(count: 100, prefix: "marker").first { expectedBackend(of: $0, backends: 3) == 1 }!
        for start in stride(from: 0, to: held.count, by: 40) {
            try send([held[start..<min(start + 40, held.count)].joined(separator: "\n")], to: harness.address)
        }
        // Datagrams are relayed in order: once the marker is at backend 1, every line for backend 0 is held.
        try send([marker], to: harness.address)
        #expect(try collect(from: [harness.backends[1]], expectedLines: 1).lines[0] == [marker])
        try harness.healthPorts[0].reopen()
        #expect(harness.wait(for: 0, .up))
        let start = MonotonicClock.nanoseconds()
        // Live lines for the recovering backend arrive while the replay runs.
        let live = lines(count: 600, prefix: "live").filter { expectedBackend(of: $0, backends: 3) == 0 }
        for first in stride(from: 0, to: live.count, by: 20) {
            try send([live[first..<min(first + 20, live.count)].joined(separator: "\n")], to: harness.address)
            usleep(20_000)  // spreads the live traffic over the replay; not a synchronisation
        }
        let received = try collect(from: [harness.backends[0]], expectedLines: held.count + live.count, seconds: 10)
        let elapsed = Double(MonotonicClock.nanoseconds() - start) / 1e9
        _ = harness.stop()
        #expect(received.lines[0] == held + live, "nothing newer overtakes what is held")
        // Pacing is a lower bound on the time (a slower machine only adds to it): everything the
        // backend received while recovering went at the rate, less one burst.
        let bytes = (held + live).reduce(0) { $0 + $1.utf8.count + 1 }
        let burst = HoldStore.burstPackets * RelayConfiguration(backends: []).packetBytes
        #expect(elapsed >= Double(bytes - burst) / Double(rate) * 0.95, "\(bytes) bytes in \(elapsed) s")
    }

    /// The operator's way out of `hold` during a long outage: a reload to `rehash` or `drop`.
    @Test("a reload leaves hold while a backend is down and its lines are held: applied at once, new lines follow the new policy, the held ones replay in order when it is back; every line once, each counted once",
          arguments: ioDrivers, [DownPolicy.rehash, .drop])
    func leaveHoldWhileDown(driver: IOBackendChoice, policy: DownPolicy) throws {
        try requireDriver(driver)
        let harness = try HealthHarness(driver: driver, policy: .hold)
        harness.healthPorts[0].close()
        #expect(harness.wait(for: 0, .down))
        let before = lines(count: 1_500, prefix: "before")
        let held = before.filter { expectedBackend(of: $0, backends: 3) == 0 }
        try send(before, to: harness.address)
        let allHeld = poll(seconds: 10) { harness.relay.liveCounters()[.linesHeld] == UInt64(held.count) }
        #expect(allHeld, "live counters: \(harness.relay.liveCounters()[.linesHeld]) of \(held.count) lines held")

        var next = harness.relay.configurationInForce
        next.onBackendDown = policy
        let plan = try harness.relay.reload(to: next, addresses: harness.backends.map(\.address))
        #expect(plan.applied.map(\.key) == ["on-backend-down"] && plan.kept.isEmpty && plan.workersNotApplied == 0)
        #expect(plan.applied.first?.note?.contains("stay queued for them") == true, "\(plan.changes)")
        #expect(harness.relay.reloads.succeeded == 1 && !harness.relay.reloads.lastReloadFailed)

        let after = lines(count: 1_500, prefix: "after")
        let afterForDown = after.filter { expectedBackend(of: $0, backends: 3) == 0 }
        try send(after, to: harness.address)
        let others = (before + after).filter { expectedBackend(of: $0, backends: 3) != 0 }
        let delivered = policy == .rehash ? others + afterForDown : others
        let live = try collect(from: Array(harness.backends[1...]), expectedLines: delivered.count)
        #expect(live.lines.flatMap { $0 }.sorted() == delivered.sorted(), "the new policy applies to new lines at once")
        #expect(try collect(from: [harness.backends[0]], expectedLines: 0, seconds: 0.1).totalLines == 0)

        try harness.healthPorts[0].reopen()
        #expect(harness.wait(for: 0, .up))
        let replayed = try collect(from: [harness.backends[0]], expectedLines: held.count, seconds: 5)
        let counters = harness.stop()
        #expect(replayed.lines[0] == held, "what was held arrives once, oldest first")
        #expect(counters[.linesHeld] == UInt64(held.count))
        #expect(counters[.linesReplayed] == UInt64(held.count))
        #expect(counters[.linesDroppedHeldAtExit] == 0 && counters[.linesDroppedHoldOverflow] == 0)
        #expect(counters[.linesRehashed] == (policy == .rehash ? UInt64(afterForDown.count) : 0))
        #expect(counters[.linesDroppedBackendDown] == (policy == .drop ? UInt64(afterForDown.count) : 0))
        #expect(counters[.linesFailOpen] == 0)
    }
}
