import Testing
@testable import UringRelay

/// The ledger's promise: no packet, line or byte is counted as sent if the network reported it
/// lost, and every packet offered to the kernel ends in exactly one counter.
@Suite("Delivery ledger: refusals attributed, deliveries confirmed")
struct DeliveryLedgerTests {
    /// One thing that happens to a backend socket, at a time in milliseconds.
    enum Event: CustomStringConvertible {
        /// The kernel accepted a packet of `lines` lines (10 bytes per line) at `ms`.
        case accept(lines: Int, ms: UInt64)
        /// A send failed for a packet of `lines` lines.
        case fail(lines: Int)
        /// A drain at `ms` found `refused` port-unreachable and `unreachable` other ICMP entries.
        case drain(refused: Int, unreachable: Int = 0, ms: UInt64)
        /// The relay exits.
        case close

        var description: String {
            switch self {
            case .accept(let lines, let ms): "accept(\(lines))@\(ms)"
            case .fail(let lines): "fail(\(lines))"
            case .drain(let refused, let unreachable, let ms): "drain(\(refused),\(unreachable))@\(ms)"
            case .close: "close"
            }
        }
    }

    /// Lines in each counter after a sequence of events: sent, refused, unreachable,
    /// send errors, unconfirmed (still pending), unconfirmed at exit, unattributed losses.
    struct Expected: Equatable, CustomStringConvertible {
        var sent = 0, refused = 0, unreachable = 0, sendErrors = 0, unconfirmed = 0, atExit = 0, unattributed = 0
        var description: String {
            "sent=\(sent) refused=\(refused) unreachable=\(unreachable) sendErrors=\(sendErrors) "
                + "unconfirmed=\(unconfirmed) atExit=\(atExit) unattributed=\(unattributed)"
        }
    }

    /// Runs `events` through a ledger with a 200 ms confirmation delay and no doubt window
    /// (these cases are about attribution; the window has its own test).
    static func run(_ events: [Event], doubtWindow: UInt64 = 0) -> DeliveryLedger {
        var ledger = DeliveryLedger(confirmationDelay: 200_000_000, doubtWindow: doubtWindow)
        for event in events {
            switch event {
            case .accept(let lines, let ms): ledger.accepted(lines: lines, bytes: lines * 10, now: ms * 1_000_000)
            case .fail(let lines): ledger.sendFailed(lines: lines, bytes: lines * 10, now: 0)
            case .drain(let refused, let unreachable, let ms):
                ledger.drained(refused: refused, unreachable: unreachable, now: ms * 1_000_000)
            case .close: ledger.closeAtExit()
            }
            #expect(ledger.verifyInvariants(), "after \(event)")
        }
        return ledger
    }

    static let cases: [(String, [Event], Expected)] = [
        ("dead backend: every accepted packet refused, none sent",
         [.accept(lines: 5, ms: 0), .accept(lines: 7, ms: 0), .accept(lines: 9, ms: 1), .drain(refused: 3, ms: 1), .drain(refused: 0, ms: 900)],
         Expected(refused: 21)),
        ("a batch to a dead port alternates accepted and failed: refused plus send errors is everything",
         [.accept(lines: 5, ms: 0), .fail(lines: 6), .accept(lines: 7, ms: 0), .fail(lines: 8), .drain(refused: 2, ms: 0), .drain(refused: 0, ms: 500)],
         Expected(refused: 12, sendErrors: 14)),
        ("live backend: unconfirmed until the delay has passed at a drain, then sent",
         [.accept(lines: 4, ms: 0), .accept(lines: 6, ms: 10), .drain(refused: 0, ms: 100)],
         Expected(unconfirmed: 10)),
        ("live backend, drained after the delay: sent",
         [.accept(lines: 4, ms: 0), .accept(lines: 6, ms: 10), .drain(refused: 0, ms: 210)],
         Expected(sent: 10)),
        ("only packets older than the delay are confirmed by a drain",
         [.accept(lines: 4, ms: 0), .accept(lines: 6, ms: 150), .drain(refused: 0, ms: 250)],
         Expected(sent: 4, unconfirmed: 6)),
        ("a refusal found late is still attributed before anything is confirmed",
         [.accept(lines: 3, ms: 0), .accept(lines: 5, ms: 0), .drain(refused: 1, ms: 700)],
         Expected(sent: 5, refused: 3)),
        ("a backend coming back: the refusals are for the oldest packets, the newer ones are sent",
         [.accept(lines: 2, ms: 0), .accept(lines: 3, ms: 5), .accept(lines: 50, ms: 10), .drain(refused: 2, ms: 12), .drain(refused: 0, ms: 300)],
         Expected(sent: 50, refused: 5)),
        ("other ICMP errors are counted apart from port unreachable, after the refusals of the same drain",
         [.accept(lines: 1, ms: 0), .accept(lines: 2, ms: 0), .accept(lines: 4, ms: 0), .drain(refused: 1, unreachable: 1, ms: 1)],
         Expected(refused: 1, unreachable: 2, unconfirmed: 4)),
        ("more errors than unconfirmed packets: the excess is unattributed, never taken from sent",
         [.accept(lines: 4, ms: 0), .drain(refused: 0, ms: 300), .accept(lines: 6, ms: 400), .drain(refused: 3, ms: 401)],
         Expected(sent: 4, refused: 6, unattributed: 2)),
        ("at exit, what no drain confirmed is unconfirmed, not sent",
         [.accept(lines: 4, ms: 0), .accept(lines: 6, ms: 100), .drain(refused: 0, ms: 250), .close],
         Expected(sent: 4, atExit: 6)),
        ("a final drain after the delay leaves nothing unconfirmed at exit",
         [.accept(lines: 4, ms: 0), .accept(lines: 6, ms: 100), .drain(refused: 1, ms: 301), .close],
         Expected(sent: 6, refused: 4)),
        ("refused packets are never counted as sent, whatever the timing",
         [.accept(lines: 8, ms: 0), .drain(refused: 0, ms: 100), .drain(refused: 1, ms: 199), .drain(refused: 0, ms: 1000)],
         Expected(refused: 8)),
    ]

    @Test("counters after a sequence of sends and drains", arguments: cases)
    func counters(name: String, events: [Event], expected: Expected) {
        let ledger = Self.run(events)
        let actual = Expected(
            sent: Int(ledger.sent.lines), refused: Int(ledger.refused.lines), unreachable: Int(ledger.unreachable.lines),
            sendErrors: Int(ledger.sendErrors.lines), unconfirmed: Int(ledger.unconfirmed.lines),
            atExit: Int(ledger.unconfirmedAtExit.lines), unattributed: Int(ledger.unattributedLosses))
        #expect(actual == expected, "\(name)")
        // Packets and bytes follow the lines: 10 bytes a line in these tables.
        #expect(ledger.sent.bytes == ledger.sent.lines * 10 && ledger.refused.bytes == ledger.refused.lines * 10)
    }

    @Test("needsDrain: after drainEvery accepted packets, or once the oldest can be confirmed; not after a drain")
    func needsDrain() {
        var ledger = DeliveryLedger(confirmationDelay: 200, drainEvery: 3)
        #expect(!ledger.needsDrain(now: 1_000))
        ledger.accepted(lines: 1, bytes: 1, now: 0)
        ledger.accepted(lines: 1, bytes: 1, now: 0)
        #expect(!ledger.needsDrain(now: 199))
        #expect(ledger.needsDrain(now: 200))
        ledger.accepted(lines: 1, bytes: 1, now: 10)
        #expect(ledger.needsDrain(now: 11))
        ledger.drained(refused: 0, unreachable: 0, now: 11)
        #expect(!ledger.needsDrain(now: 199))
        #expect(ledger.needsDrain(now: 210))
        ledger.drained(refused: 0, unreachable: 0, now: 210)
        #expect(!ledger.needsDrain(now: 10_000) && ledger.sent.packets == 3)
    }

    @Test("the queue keeps FIFO order while it grows and wraps", arguments: [1, 63, 64, 65, 1_000])
    func fifoAcrossGrowth(batch: Int) {
        var ledger = DeliveryLedger(confirmationDelay: 1_000_000, doubtWindow: 0)
        var next = 1
        var expectedRefused: UInt64 = 0
        var expectedSent: UInt64 = 0
        for round in 0..<20 {
            // Packet n holds n lines, so the refused line total names exactly which packets were taken.
            for _ in 0..<batch {
                ledger.accepted(lines: next, bytes: next, now: UInt64(round))
                next += 1
            }
            let refuse = batch / 2
            let oldest = round * refuse + 1  // FIFO: the packets refused so far are 1…round × refuse
            expectedRefused += (0..<refuse).reduce(0) { $0 + UInt64(oldest + $1) }
            ledger.drained(refused: refuse, unreachable: 0, now: UInt64(round))
        }
        ledger.drained(refused: 0, unreachable: 0, now: 10_000_000)
        expectedSent = UInt64((1..<next).reduce(0, +)) - expectedRefused
        #expect(ledger.refused.lines == expectedRefused)
        #expect(ledger.sent.lines == expectedSent)
        #expect(ledger.unconfirmed == DeliveryLedger.Counts())
        #expect(ledger.verifyInvariants())
    }

    @Test("within a second of an ICMP error, packets without an error of their own are doubted, not sent (remote hosts rate-limit ICMP)")
    func doubtAfterAnError() {
        let ledger = Self.run([
            .accept(lines: 10, ms: 0),  // confirmed before any error: sent
            .drain(refused: 0, ms: 300),
            .accept(lines: 3, ms: 400),  // refused (the one error a rate-limited host sends)
            .accept(lines: 4, ms: 410),  // no error of its own, but inside the window: doubted
            .drain(refused: 1, ms: 450),
            .accept(lines: 5, ms: 1_400),  // still within 1 s of the error at 450 ms
            .accept(lines: 6, ms: 1_500),  // after the window: sent
            .drain(refused: 0, ms: 2_000),
            .drain(refused: 0, ms: 2_400),  // the 1 400 ms packet is decided a window after it
        ], doubtWindow: 1_000_000_000)
        #expect(ledger.sent.lines == 16)
        #expect(ledger.refused.lines == 3)
        #expect(ledger.doubted.lines == 9)
        #expect(ledger.unconfirmed.packets == 0)
        #expect(ledger.verifyInvariants())
    }
}
