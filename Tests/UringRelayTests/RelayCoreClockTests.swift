import RelayKernel
import Testing
@testable import UringRelay

/// The core under a manual clock: it reads no clock of its own, so a batch's flush deadline and
/// the publication of its counters follow only the times it is given.
@Suite("Relay core: a manual clock")
struct RelayCoreClockTests {
    @Test("a batch is due exactly one flush interval after it opened, by the times given (a year past any real monotonic clock); the counters are published with the turn's time, and an idle core wakes for a heartbeat every 250 ms")
    func flushDeadline() throws {
        var settings = try RelayCoreTests.settings(["127.0.0.1:9001"])
        settings.flushIntervalNanoseconds = 10_000_000
        // A time no real monotonic clock of a test host shows: a core reading one would disagree.
        let start: UInt64 = 86_400 * 1_000_000_000 * 365
        var core = try RelayCore(settings: settings, now: start)
        core.beginTurn(now: start)
        RelayCoreCommandTests.receive(["clock:1|c"], into: &core, now: start)
        _ = core.endTurn(now: start, moreToReceive: false)
        let deadline = core.nextDeadline(now: start)
        #expect(deadline == start + 10_000_000)

        // One nanosecond early: still open.
        core.beginTurn(now: start + 9_999_999)
        _ = core.endTurn(now: start + 9_999_999, moreToReceive: false)
        let early = RelayCoreCommandTests.sendAll(&core)
        #expect(early.isEmpty)

        core.beginTurn(now: start + 10_000_000)
        _ = core.endTurn(now: start + 10_000_000, moreToReceive: false)
        let due = RelayCoreCommandTests.sendAll(&core)
        #expect(due == ["clock:1|c\n"])
        // Nothing open now: the next deadline is the publication of the turns' counters, 100 ms
        // (`docs/operations.md`) after the core started.
        let publication = core.nextDeadline(now: start + 10_000_000)
        #expect(publication == start + 100_000_000)

        core.beginTurn(now: start + 100_000_000)
        _ = core.endTurn(now: start + 100_000_000, moreToReceive: false)
        #expect(settings.board.publishedAt == start + 100_000_000)
        #expect(settings.board.counters?[.linesForwarded] == 1)
        // Idle from here: the next turn is the heartbeat, 250 ms after that publication, and it
        // publishes again.
        let heartbeat = core.nextDeadline(now: start + 100_000_000)
        #expect(heartbeat == start + 350_000_000)
        core.beginTurn(now: start + 350_000_000)
        _ = core.endTurn(now: start + 350_000_000, moreToReceive: false)
        #expect(settings.board.publishedAt == start + 350_000_000)
        let nextHeartbeat = core.nextDeadline(now: start + 350_000_000)
        #expect(nextHeartbeat == start + 600_000_000)
    }
}
