@testable import RelayKernel
import Foundation
import Glibc
import Testing
@testable import UringRelay

/// `SIGUSR1` prints the live counters "at most 100 ms old" (README, docs/operations.md): what a
/// worker counted shows in a report requested 100 ms later, busy or idle.
@Suite("SIGUSR1: live counters at most 100 ms old", .serialized, .timeLimit(.minutes(1)), .onOwnThread)
struct LiveCountersTests {
    /// The documented age, and what this side adds on a loaded machine (signal delivery, the
    /// report's way through the pipe): a bound on the promise, not a speed.
    static let promisedSeconds = 0.1
    static let slackSeconds = 0.3

    /// Requests reports until one shows `datagrams` received; returns how long after `since`
    /// the first such report was requested (`nil`: none within `seconds`).
    static func firstShowing(_ datagrams: UInt64, relay: RelayProcess, since: Date, seconds: Double) -> Double? {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            let requested = Date()
            if let report = relay.liveReport(), (report["statsrelay.datagrams_received"] ?? 0) >= datagrams {
                return requested.timeIntervalSince(since)
            }
        }
        return nil
    }

    @Test("an idle worker's last datagram shows in a SIGUSR1 report within 100 ms", arguments: ioDrivers)
    func idleWorkerIsFresh(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let relay = try RelayProcess(driver: driver, ["--bind", "127.0.0.1", "--port", "0", "--threads", "1", backend.spec])
        let address = try relay.listenAddress()
        // Lines the worker only counts (no colon: dropped as malformed), so no send and no
        // confirmation wakes it afterwards: between datagrams it is idle.
        try send(["first datagram"], to: address)
        let first = Self.firstShowing(1, relay: relay, since: Date(), seconds: 3)
        #expect(first != nil, "the first datagram never showed: \(relay.standardError.suffix(500))")
        // A publication has just been seen; a second datagram now lands within the worker's
        // publication interval, and then nothing else happens.
        let sent = Date()
        try send(["second datagram"], to: address)
        let age = Self.firstShowing(2, relay: relay, since: sent, seconds: 3)
        relay.signal(SIGTERM)
        #expect(relay.waitForExit() == 0)
        #expect(relay.counter("statsrelay.lines_dropped.missing_colon") == 2)
        #expect((age ?? .infinity) <= Self.promisedSeconds + Self.slackSeconds,
                "the second datagram showed \(age.map { "\($0) s" } ?? "never") after it was sent")
    }

    @Test("a busy worker's counters in SIGUSR1 reports lag the traffic by at most 100 ms", arguments: ioDrivers)
    func busyWorkerIsFresh(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let relay = try RelayProcess(driver: driver, ["--bind", "127.0.0.1", "--port", "0", "--threads", "1", backend.spec])
        let address = try relay.listenAddress()
        let sender = try PacedSender(to: address, count: 3_000, perSecond: 2_000, seconds: 10) { Array("busy.\($0):1|c".utf8) }
        var arrived = 0
        var checks = 0
        while checks < 3 {
            // Every line at the backend by `moment` came in its own datagram, which the relay
            // received before then: a report whose counters are at most 100 ms old, requested
            // 100 ms (plus slack) after `moment`, shows at least that many.
            arrived += try collect(from: [backend], expectedLines: arrived + 200, seconds: 2, settleMilliseconds: 1).totalLines
            let moment = Date()
            usleep(UInt32((Self.promisedSeconds + Self.slackSeconds) * 1e6))  // the promise's own window
            let report = try #require(relay.liveReport())
            let shown = report["statsrelay.datagrams_received"] ?? 0
            #expect(shown >= UInt64(arrived), "\(arrived) lines had arrived at \(moment); a report requested after \(Date().timeIntervalSince(moment)) s shows \(shown) datagrams")
            checks += 1
        }
        let totals = sender.finish()
        relay.signal(SIGTERM)
        #expect(relay.waitForExit() == 0)
        #expect(relay.counter("statsrelay.datagrams_received") == UInt64(totals.sent))
    }
}
