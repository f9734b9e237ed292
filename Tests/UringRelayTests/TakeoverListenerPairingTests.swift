import Testing
@testable import UringRelay

/// How the old relay pairs the listeners a takeover asks for with its running ones: as a set,
/// each running listener named once, as configured or as bound, in any order.
@Suite("Takeover listener pairing")
struct TakeoverListenerPairingTests {
    /// Running: `a` (configured `127.0.0.1:0`, bound `127.0.0.1:5000`), `b`, `tcp:c`.
    static let running: [(configured: String, bound: String)] = [
        ("127.0.0.1:0", "127.0.0.1:5000"), ("127.0.0.1:6000", "127.0.0.1:6000"), ("tcp:127.0.0.1:7000", "tcp:127.0.0.1:7000"),
    ]

    struct Case: Sendable, CustomTestStringConvertible {
        var asked: [String]
        var order: [Int]
        var unknown: [Int] = []
        var unasked: [Int] = []
        var testDescription: String { asked.joined(separator: ",") }
    }

    @Test("each asked listener gets a distinct running one; what is left over is named", arguments: [
        // In the running order, as configured or as bound.
        Case(asked: ["127.0.0.1:0", "127.0.0.1:6000", "tcp:127.0.0.1:7000"], order: [0, 1, 2]),
        Case(asked: ["127.0.0.1:5000", "127.0.0.1:6000", "tcp:127.0.0.1:7000"], order: [0, 1, 2]),
        // In another order: the offer follows the request.
        Case(asked: ["127.0.0.1:6000", "127.0.0.1:0", "tcp:127.0.0.1:7000"], order: [1, 0, 2]),
        Case(asked: ["tcp:127.0.0.1:7000", "127.0.0.1:6000", "127.0.0.1:5000"], order: [2, 1, 0]),
        // One named twice takes one running listener only.
        Case(asked: ["127.0.0.1:6000", "127.0.0.1:6000", "tcp:127.0.0.1:7000"], order: [1, 2], unknown: [1], unasked: [0]),
        // Fewer, more, or other listeners.
        Case(asked: ["127.0.0.1:6000", "tcp:127.0.0.1:7000"], order: [1, 2], unasked: [0]),
        Case(asked: ["127.0.0.1:0", "127.0.0.1:6000", "tcp:127.0.0.1:7000", "127.0.0.1:8000"], order: [0, 1, 2], unknown: [3]),
        Case(asked: ["127.0.0.1:0", "127.0.0.1:6001", "tcp:127.0.0.1:7000"], order: [0, 2], unknown: [1], unasked: [1]),
        // A datagram listener's address never names a TCP one.
        Case(asked: ["127.0.0.1:0", "127.0.0.1:6000", "127.0.0.1:7000"], order: [0, 1], unknown: [2], unasked: [2]),
    ])
    func pairing(_ test: Case) {
        let result = ControlServer.pair(asked: test.asked, running: Self.running)
        #expect(result.order == test.order)
        #expect(result.unknown == test.unknown)
        #expect(result.unasked == test.unasked)
    }

    @Test("two running listeners configured alike are told apart by their bound addresses, whichever order asks for them")
    func configuredAlike() {
        let running: [(configured: String, bound: String)] = [("127.0.0.1:0", "127.0.0.1:5000"), ("127.0.0.1:0", "127.0.0.1:5001")]
        #expect(ControlServer.pair(asked: ["127.0.0.1:5001", "127.0.0.1:0"], running: running).order == [1, 0])
        #expect(ControlServer.pair(asked: ["127.0.0.1:0", "127.0.0.1:5001"], running: running).order == [0, 1])
        #expect(ControlServer.pair(asked: ["127.0.0.1:0", "127.0.0.1:0"], running: running).order == [0, 1])
    }
}
