@testable import RelayKernel
import Foundation
import Glibc
import Testing
@testable import UringRelay

@Suite("Flap damping on loopback", .serialized, .timeLimit(.minutes(1)), .onOwnThread)
struct FlapDampingKernelTests {
    /// Backend 1's TCP health port is closed and reopened every 150 ms for 3 s, checked every
    /// 50 ms with rise 2 and fall 2. Undamped, most half-periods of three checks complete a
    /// change (over 8 in 3 s). Damped with a first hold of 1 s: the first down, up, a flap held
    /// 1 s, up, a flap held 2 s (past the end): at most 5 changes, each flap logged once.
    @Test("a backend flapping every 300 ms changes state at most 5 times in 3 s when damped, over 8 when not",
          arguments: ioDrivers, [true, false])
    func flapHeldDown(driver: IOBackendChoice, damped: Bool) throws {
        try requireDriver(driver)
        let harness = try HealthHarness(driver: driver, policy: .rehash) { configuration in
            configuration.flapHoldNanoseconds = damped ? 1_000_000_000 : 0
            configuration.flapHoldMaxNanoseconds = damped ? 10_000_000_000 : 0
        }
        let start = Date()
        var open = true
        for _ in 0..<20 where Date().timeIntervalSince(start) < 3 {
            if open { harness.healthPorts[1].close() } else { try harness.healthPorts[1].reopen() }
            open.toggle()
            usleep(150_000)
        }
        if !open { try harness.healthPorts[1].reopen() }
        let status = harness.relay.monitor.status[1]
        let flapsLogged = occurrences(of: "flapping, held down", in: harness.log.withLock { $0 })
        if damped {
            #expect(status.changes <= 5, "\(status.changes) state changes")
            #expect(status.flapHolds >= 1)
            #expect(flapsLogged == status.flapHolds)
            // Held: down although its health port now answers, and the workers route around it.
            #expect(status.heldUntil != nil && status.state == .down)
            #expect(harness.relay.routing.current.down[1])
            let snapshot = harness.relay.snapshot(version: "test", startTimeUnixSeconds: 0)
            #expect(snapshot.backends[1].flapHolds == status.flapHolds)
        } else {
            #expect(status.changes > 8, "\(status.changes) state changes")
            #expect(status.flapHolds == 0 && flapsLogged == 0)
        }
        _ = harness.stop()
    }
}
