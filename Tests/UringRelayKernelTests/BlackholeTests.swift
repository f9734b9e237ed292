@testable import RelayKernel
import Foundation
import Glibc
import Testing
@testable import UringRelay

/// What a relay's counters said about a backend behind a silent firewall.
struct BlackholeRun: Sendable {
    var driver: IOBackendChoice?
    /// Lines routed to the blackholed backend while only its UDP was dropped, and what the
    /// relay claimed for them: sent, refused, arrived.
    var silentLines = 0
    var silentSent: UInt64 = 0
    var silentRefused: UInt64 = 0
    var silentArrived = 0
    /// Whether the health check saw the backend go down once its TCP port was dropped too, and why.
    var wentDown = false
    var lastFailure: String?
    /// Lines routed to it after that, and what the relay claimed for them.
    var downLines = 0
    var downSent: UInt64 = 0
    var downDropped: UInt64 = 0
    var downArrived = 0
}

/// A backend behind a firewall that drops its packets without a word (no ICMP): the relay can
/// know nothing of it from UDP, and claims what the kernel accepted; only a health check that
/// crosses the same firewall shows the loss. Documented in docs/operations.md#counters.
@Suite("A blackholed backend: what the relay can know and what it claims", .serialized, .timeLimit(.minutes(1)), .onOwnThread)
struct BlackholeTests {
    @Test("UDP silently dropped with the TCP check passing: its lines count as sent, none refused, none arrive; once its TCP port is dropped too, the check takes it down and its lines count as dropped, not sent", arguments: ioDrivers)
    func blackholedBackend(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let run = try Self.relayToBlackhole(driver: driver)
        #expect(run.driver == driver)
        // What UDP cannot show: every line is handed to the kernel and nothing comes back.
        #expect(run.silentLines > 0)
        #expect(run.silentArrived == 0, "the firewall let \(run.silentArrived) lines through")
        #expect(run.silentSent == UInt64(run.silentLines), "sent counts what the kernel accepted")
        #expect(run.silentRefused == 0, "a silent drop sends no refusal to count")
        // What a health check crossing the same firewall shows.
        #expect(run.wentDown, "the TCP check never took the blackholed backend down")
        #expect(run.lastFailure?.isEmpty == false)
        #expect(run.downLines > 0)
        #expect(run.downSent == 0, "a delivery was claimed to a backend known to be down")
        #expect(run.downDropped == UInt64(run.downLines), "each line for the down backend counted dropped")
        #expect(run.downArrived == 0)
    }

    /// Three backends (TCP checks every 50 ms, `drop` policy) in a private namespace; backend 1's
    /// UDP port is dropped by the firewall's input hook, lines sent; then its TCP check port too,
    /// and once the monitor has it down, more lines sent.
    static func relayToBlackhole(driver: IOBackendChoice) throws -> BlackholeRun {
        try inNetworkNamespace { loadRules in
            let harness = try HealthHarness(driver: driver, policy: .drop)
            var run = BlackholeRun(driver: harness.relay.driver)
            let port = harness.backends[1].address.port
            try loadRules("""
                table inet statsrelay_blackhole {
                    chain silent {
                        type filter hook input priority 0;
                        udp dport \(port) drop
                    }
                }
                """)
            let toBlackhole = lines(count: 3_000, prefix: "silent").filter { expectedBackend(of: $0, backends: 3) == 1 }
            let before = harness.relay.liveCounters()
            try send(toBlackhole, to: harness.address)
            // Every line reaches the other two backends' share; here only backend 1's were sent,
            // so wait until the relay has sent them all (its counters, published every 100 ms).
            #expect(poll(seconds: 10) {
                harness.relay.liveCounters()[.linesSent, backend: 1] - before[.linesSent, backend: 1] >= UInt64(toBlackhole.count)
            })
            let afterSilent = harness.relay.liveCounters()
            run.silentLines = toBlackhole.count
            run.silentSent = afterSilent[.linesSent, backend: 1] - before[.linesSent, backend: 1]
            run.silentRefused = afterSilent[.linesRefused, backend: 1] - before[.linesRefused, backend: 1]
            run.silentArrived = try collect(from: [harness.backends[1]], expectedLines: 0, seconds: 0.3).totalLines

            try loadRules("add rule inet statsrelay_blackhole silent tcp dport \(port) drop")
            run.wentDown = harness.wait(for: 1, .down)
            run.lastFailure = harness.relay.monitor.status[1].lastFailure
            let toDown = lines(count: 3_000, prefix: "down").filter { expectedBackend(of: $0, backends: 3) == 1 }
            let beforeDown = harness.relay.liveCounters()
            try send(toDown, to: harness.address)
            let counters = harness.stop()
            run.downLines = toDown.count
            run.downSent = counters[.linesSent, backend: 1] - beforeDown[.linesSent, backend: 1]
            run.downDropped = counters[.linesDroppedBackendDown, backend: 1] - beforeDown[.linesDroppedBackendDown, backend: 1]
            run.downArrived = try collect(from: [harness.backends[1]], expectedLines: 0, seconds: 0.2).totalLines
            return run
        }
    }
}
