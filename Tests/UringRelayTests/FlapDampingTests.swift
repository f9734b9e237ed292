@testable import RelayKernel
import Testing
@testable import UringRelay

/// Flap damping in `HealthTracker`, driven by a manual clock (milliseconds written as
/// nanoseconds below, so each step is visible).
@Suite("Flap damping")
struct FlapDampingTests {
    static let ms: UInt64 = 1_000_000

    /// A tracker with rise 1 and fall 1 (each result can change the state), a first hold of
    /// `hold` ms and a longest of `max` ms.
    static func tracker(hold: UInt64 = 1_000, max: UInt64 = 8_000) -> HealthTracker {
        HealthTracker(rise: 1, fall: 1, now: 0, flapHoldNanoseconds: hold * ms, flapHoldMaxNanoseconds: max * ms)
    }

    @Test("a backend's first down is not held: it comes back at its first success")
    func firstDownNotHeld() {
        var tracker = Self.tracker()
        #expect(tracker.record(success: false, now: 100 * Self.ms) == .down)
        #expect(tracker.holdNanoseconds == 0)
        #expect(!tracker.isHeld(at: 101 * Self.ms))
        #expect(tracker.record(success: true, now: 150 * Self.ms) == .up)
        #expect(tracker.flapHolds == 0)
    }

    @Test("down again soon after coming up: held down for the first hold from the down, then up at the next success")
    func flapIsHeld() {
        var tracker = Self.tracker()
        _ = tracker.record(success: false, now: 100 * Self.ms)
        _ = tracker.record(success: true, now: 200 * Self.ms)
        #expect(tracker.record(success: false, now: 300 * Self.ms) == .down)
        #expect(tracker.holdNanoseconds == 1_000 * Self.ms)
        #expect(tracker.heldUntil == 1_300 * Self.ms)
        #expect(tracker.flapHolds == 1)
        // Successes during the hold change nothing.
        for time: UInt64 in [400, 800, 1_299] {
            #expect(tracker.record(success: true, now: time * Self.ms) == nil)
            #expect(tracker.state == .down)
        }
        #expect(tracker.record(success: true, now: 1_300 * Self.ms) == .up)
        #expect(tracker.heldUntil == nil)
    }

    @Test("each further flap doubles the hold, up to the longest", arguments: [
        (UInt64(1_000), UInt64(8_000), [UInt64(1_000), 2_000, 4_000, 8_000, 8_000]),
        (UInt64(500), UInt64(1_200), [UInt64(500), 1_000, 1_200, 1_200, 1_200]),
    ])
    func holdDoublesToCap(hold: UInt64, max: UInt64, holds: [UInt64]) {
        var tracker = Self.tracker(hold: hold, max: max)
        var now: UInt64 = 0
        _ = tracker.record(success: false, now: now)  // the first down: no hold
        var seen: [UInt64] = []
        for _ in holds {
            now += 10 * Self.ms
            #expect(tracker.record(success: true, now: now + tracker.holdNanoseconds) == .up)
            now += tracker.holdNanoseconds + 10 * Self.ms  // up for 10 ms: a flap
            #expect(tracker.record(success: false, now: now) == .down)
            seen.append(tracker.holdNanoseconds / Self.ms)
        }
        #expect(seen == holds)
        #expect(tracker.flapHolds == holds.count)
    }

    @Test("a backend up for the longest hold is forgiven: its next down is not held")
    func stableIsForgiven() {
        var tracker = Self.tracker(hold: 1_000, max: 8_000)
        _ = tracker.record(success: false, now: 0)
        _ = tracker.record(success: true, now: 10 * Self.ms)
        _ = tracker.record(success: false, now: 20 * Self.ms)  // flap: held 1 s
        #expect(tracker.record(success: true, now: 1_020 * Self.ms) == .up)
        // Up for exactly the longest hold, then down: not a flap.
        #expect(tracker.record(success: false, now: (1_020 + 8_000) * Self.ms) == .down)
        #expect(tracker.holdNanoseconds == 0)
        #expect(tracker.record(success: true, now: (1_020 + 8_001) * Self.ms) == .up)
        // Its next flap starts again from the first hold, not from double the last.
        #expect(tracker.record(success: false, now: (1_020 + 8_002) * Self.ms) == .down)
        #expect(tracker.holdNanoseconds == 1_000 * Self.ms)
    }

    @Test("a failure during the hold starts the run of successes again; rise still applies after the hold")
    func riseAfterHold() {
        var tracker = HealthTracker(rise: 2, fall: 1, now: 0, flapHoldNanoseconds: 1_000 * Self.ms, flapHoldMaxNanoseconds: 8_000 * Self.ms)
        _ = tracker.record(success: false, now: 0)
        _ = tracker.record(success: true, now: 10 * Self.ms)
        _ = tracker.record(success: true, now: 20 * Self.ms)  // up
        #expect(tracker.state == .up)
        _ = tracker.record(success: false, now: 30 * Self.ms)  // flap: held until 1030
        _ = tracker.record(success: true, now: 1_000 * Self.ms)
        _ = tracker.record(success: false, now: 1_010 * Self.ms)
        #expect(tracker.record(success: true, now: 1_040 * Self.ms) == nil)  // one success of two
        #expect(tracker.record(success: true, now: 1_050 * Self.ms) == .up)
    }

    @Test("flap-hold 0 turns damping off: every flap comes back at its first success")
    func off() {
        var tracker = Self.tracker(hold: 0, max: 0)
        for step: UInt64 in 0..<10 {
            #expect(tracker.record(success: false, now: (2 * step) * Self.ms) == .down)
            #expect(tracker.record(success: true, now: (2 * step + 1) * Self.ms) == .up)
        }
        #expect(tracker.flapHolds == 0)
    }

    /// The issue's case: a backend down and up every 700 ms (350 ms each), checked every
    /// 100 ms with rise 2 and fall 2, for 30 s. Undamped, each half-period of 3-4 checks
    /// completes a change: about 2 changes per 700 ms, over 80 in 30 s. Damped with a first
    /// hold of 10 s and a longest of 60 s: the first down (not held), up, a flap held 10 s,
    /// up, a flap held 20 s (reaching past 30 s): at most 5 changes.
    @Test("a backend flapping every 700 ms changes state at most 5 times in 30 s (over 80 undamped)")
    func issueFlap() {
        func changes(hold: UInt64, max: UInt64) -> Int {
            var tracker = HealthTracker(rise: 2, fall: 2, now: 0, flapHoldNanoseconds: hold * Self.ms, flapHoldMaxNanoseconds: max * Self.ms)
            for check: UInt64 in stride(from: 0, to: 30_000, by: 100) {
                let healthy = (check / 350) % 2 == 0
                _ = tracker.record(success: healthy, now: check * Self.ms)
            }
            return tracker.changes
        }
        #expect(changes(hold: 0, max: 0) > 80)
        #expect(changes(hold: 10_000, max: 60_000) <= 5)
    }
}
