import Testing
@testable import UringRelay

/// `StreamLineFramer`: a stream cut anywhere is framed into the same complete lines as the
/// whole; a partial line waits for its end; an over-long line is refused wherever it falls.
@Suite("Stream line framing")
struct StreamLineFramerTests {
    /// What the framer delivered for `chunks` in order, as text, and each feed's outcome; the
    /// stream's end (`finish`) last unless a feed refused.
    static func frame(_ chunks: [String], maximum: Int) -> (delivered: [String], outcomes: [StreamLineFramer.Outcome]) {
        var framer = StreamLineFramer(maximumLineBytes: maximum)
        var delivered: [String] = []
        var outcomes: [StreamLineFramer.Outcome] = []
        for chunk in chunks {
            let bytes = Array(chunk.utf8)
            let outcome = framer.feed(bytes.span.bytes) { span in
                delivered.append(String(decoding: Array(Span<UInt8>(_bytes: span).indices.map { Span<UInt8>(_bytes: span)[$0] }), as: UTF8.self))
            }
            outcomes.append(outcome)
            let consistent = framer.verifyInvariants()
            #expect(consistent)
            if outcome == .lineTooLong { return (delivered, outcomes) }
        }
        framer.finish { span in
            delivered.append(String(decoding: Array(Span<UInt8>(_bytes: span).indices.map { Span<UInt8>(_bytes: span)[$0] }), as: UTF8.self))
        }
        return (delivered, outcomes)
    }

    /// The lines of `text` as a reader of the whole stream sees them (the last without `\n`).
    static func lines(_ delivered: [String]) -> [String] {
        // By bytes: a String holds "\r\n" as one Character, which splitting at "\n" would miss.
        Array(delivered.joined().utf8).split(separator: UInt8(ascii: "\n")).map { String(decoding: $0, as: UTF8.self) }
    }

    static let stream = "a:1|c\nbb:2|g\n\nccc:3|ms|@0.5|#k:v\r\nd:4|c\nlast:5|c"

    @Test("every way of cutting the stream in two or three gives the same lines, each delivered run ending with \\n (but the last, unterminated line at the end)")
    func everyCut() {
        let bytes = Array(Self.stream.utf8)
        let expected = ["a:1|c", "bb:2|g", "ccc:3|ms|@0.5|#k:v\r", "d:4|c", "last:5|c"]
        for first in 0...bytes.count {
            for second in first...bytes.count where second == first || second == bytes.count || (second - first) % 3 == 0 {
                let chunks = [bytes[..<first], bytes[first..<second], bytes[second...]].map { String(decoding: $0, as: UTF8.self) }
                let (delivered, outcomes) = Self.frame(chunks, maximum: 64)
                #expect(outcomes.allSatisfy { $0 == .framed })
                #expect(Self.lines(delivered) == expected, "cut at \(first), \(second)")
                #expect(delivered.dropLast().allSatisfy { $0.utf8.last == UInt8(ascii: "\n") }, "cut at \(first), \(second): \(delivered)")
                #expect(delivered.joined() == Self.stream)
            }
        }
    }

    @Test(
        "line length against the maximum (8 bytes), however it arrives",
        arguments: [
            (["12345678\n"], [StreamLineFramer.Outcome.framed], ["12345678\n"]),
            (["123456789\n"], [.lineTooLong], []),
            (["1234", "5678\n"], [.framed, .framed], ["12345678\n"]),
            (["1234", "56789"], [.framed, .lineTooLong], []),
            (["1234", "5", "6789\n"], [.framed, .framed, .lineTooLong], []),
            (["ok\n123456789\nnever\n"], [.lineTooLong], ["ok\n"]),
            (["ok\n12345678"], [.framed], ["ok\n", "12345678"]),
            (["ok\n123456789"], [.lineTooLong], ["ok\n"]),
        ])
    func maximum(chunks: [String], outcomes: [StreamLineFramer.Outcome], delivered: [String]) {
        let result = Self.frame(chunks, maximum: 8)
        #expect(result.outcomes == outcomes)
        #expect(result.delivered == delivered)
    }

    @Test("a partial line is held (counted), not delivered, until its end comes")
    func partialHeld() {
        var framer = StreamLineFramer(maximumLineBytes: 100)
        var deliveries = 0
        let first = Array("name.with.a.lo".utf8)
        let firstOutcome = framer.feed(first.span.bytes) { _ in deliveries += 1 }
        #expect(firstOutcome == .framed)
        #expect(deliveries == 0)
        let held = framer.partialByteCount
        #expect(held == first.count)
        let second = Array("ng.name:1|c\n".utf8)
        var text = ""
        let secondOutcome = framer.feed(second.span.bytes) { span in
            text += String(decoding: (0..<span.byteCount).map { Span<UInt8>(_bytes: span)[$0] }, as: UTF8.self)
        }
        #expect(secondOutcome == .framed)
        #expect(text == "name.with.a.long.name:1|c\n")
        let left = framer.partialByteCount
        #expect(left == 0)
    }

    @Test("whole lines of a read are lent on in one run, not line by line")
    func oneRun() {
        var framer = StreamLineFramer(maximumLineBytes: 100)
        var runs: [Int] = []
        let bytes = Array("a:1|c\nb:1|c\nc:1|c\npart".utf8)
        _ = framer.feed(bytes.span.bytes) { runs.append($0.byteCount) }
        #expect(runs == [18])
        let left = framer.partialByteCount
        #expect(left == 4)
    }
}
