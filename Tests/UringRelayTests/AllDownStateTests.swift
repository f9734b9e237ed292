import Testing
@testable import UringRelay

/// `AllDownState`: what the health monitor publishes (`statsrelay_failing_open`,
/// `statsrelay_fail_open_activations_total`) and logs when every backend is down, whichever of
/// the health view or the down-policy (a reload) changed last.
@Suite("Every backend down: failing open or holding")
struct AllDownStateTests {
    /// One fact the monitor learns (a round, a reload, a pool change) and the state after it.
    struct Step: Sendable {
        var allDown: Bool
        var policy: DownPolicy
        var mode: AllDownState.Mode
        var activations: UInt64
    }

    /// A named run of steps from a relay with every backend up.
    struct Run: Sendable, CustomTestStringConvertible {
        var name: String
        var steps: [Step]
        var testDescription: String { name }
    }

    static func step(_ allDown: Bool, _ policy: DownPolicy, _ mode: AllDownState.Mode, _ activations: UInt64) -> Step {
        Step(allDown: allDown, policy: policy, mode: mode, activations: activations)
    }

    static let runs: [Run] = [
        Run(name: "rehash all down, reload to hold: failing open ends at once; a backend up: relaying", steps: [
            step(true, .rehash, .failingOpen, 1), step(true, .hold, .holding, 1), step(false, .hold, .relaying, 1),
        ]),
        Run(name: "hold all down, reload to rehash: failing open begins at once, counted; a backend up: it ends", steps: [
            step(true, .hold, .holding, 0), step(true, .rehash, .failingOpen, 1), step(false, .rehash, .relaying, 1),
        ]),
        Run(name: "back and forth between hold and rehash, all down: each start of failing open counted", steps: [
            step(true, .rehash, .failingOpen, 1), step(true, .hold, .holding, 1), step(true, .rehash, .failingOpen, 2),
            step(true, .drop, .failingOpen, 2), step(true, .hold, .holding, 2), step(false, .hold, .relaying, 2),
        ]),
        Run(name: "rehash to drop, all down: still failing open, counted once", steps: [
            step(true, .rehash, .failingOpen, 1), step(true, .drop, .failingOpen, 1), step(false, .drop, .relaying, 1),
        ]),
        Run(name: "every backend down again after one came back: counted again", steps: [
            step(true, .drop, .failingOpen, 1), step(false, .drop, .relaying, 1), step(true, .drop, .failingOpen, 2),
        ]),
        Run(name: "a reload while a backend is up changes nothing", steps: [
            step(false, .hold, .relaying, 0), step(false, .rehash, .relaying, 0), step(false, .hold, .relaying, 0),
        ]),
    ]

    @Test("the mode is every backend down and the policy now, whatever changed last", arguments: runs)
    func modeFollowsFacts(_ run: Run) {
        var state = AllDownState()
        for (index, step) in run.steps.enumerated() {
            let before = state.mode
            let previous = state.update(allDown: step.allDown, policy: step.policy)
            #expect(state.mode == step.mode, "step \(index)")
            #expect(state.activations == step.activations, "step \(index)")
            #expect(previous == (before == step.mode ? nil : before), "step \(index): a change reports the mode it left")
            #expect(state.isFailingOpen == (step.mode == .failingOpen), "step \(index)")
            // The workers' routers decide by the same two facts.
            var router = Router(backendCount: 2, policy: step.policy)
            for backend in 0..<2 { router.setDown(backend, step.allDown) }
            #expect(router.isFailingOpen == state.isFailingOpen, "step \(index): the gauge says what the routers do")
        }
    }

    @Test("the same facts again change nothing and count nothing", arguments: DownPolicy.allCases, [false, true])
    func idempotent(_ policy: DownPolicy, _ allDown: Bool) {
        var state = AllDownState()
        _ = state.update(allDown: allDown, policy: policy)
        let settled = state
        for _ in 0..<3 { #expect(state.update(allDown: allDown, policy: policy) == nil) }
        #expect(state == settled)
    }
}
