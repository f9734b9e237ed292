import Testing
@testable import UringRelay

/// `StreamLineFramer` against a reference, over generated streams cut in generated ways: the
/// checks of the `FuzzStreamLineFramer` target (FuzzTesting/), on a fixed, bounded sample.
@Suite("Stream line framing against a reference")
struct StreamLineFramerPropertyTests {
    /// A small deterministic generator (a linear congruential step).
    struct Generator {
        var state: UInt32
        mutating func next(_ bound: Int) -> Int {
            state = state &* 1_103_515_245 &+ 12_345
            return Int((state >> 16) % UInt32(bound))
        }
    }

    /// The stream's lines as (start, length without `\n`), the last possibly unterminated.
    static func referenceLines(_ stream: [UInt8]) -> [(start: Int, length: Int)] {
        var lines: [(Int, Int)] = []
        var start = 0
        for (index, byte) in stream.enumerated() where byte == UInt8(ascii: "\n") {
            lines.append((start, index - start))
            start = index + 1
        }
        if start < stream.count { lines.append((start, stream.count - start)) }
        return lines
    }

    /// Feeds `stream` cut at `cuts`; what was delivered, whether a read was refused, and the
    /// faults seen (a run not ending in `\n`, a line over the maximum, broken invariants).
    static func run(_ stream: [UInt8], cuts: [Int], maximum: Int) -> (delivered: [UInt8], refused: Bool, faults: [String]) {
        var framer = StreamLineFramer(maximumLineBytes: maximum)
        var delivered: [UInt8] = []
        var faults: [String] = []
        var start = 0
        for end in cuts + [stream.count] where end >= start {
            let chunk = Array(stream[start..<end])
            start = end
            let outcome = framer.feed(chunk.span.bytes) { run in
                let bytes = Span<UInt8>(_bytes: run)
                if bytes.count == 0 || bytes[bytes.count - 1] != UInt8(ascii: "\n") { faults.append("a run without its \\n") }
                var lineStart = 0
                for index in 0..<bytes.count where bytes[index] == UInt8(ascii: "\n") {
                    if index - lineStart > maximum { faults.append("a line of \(index - lineStart) bytes") }
                    lineStart = index + 1
                }
                for index in 0..<bytes.count { delivered.append(bytes[index]) }
            }
            if !framer.verifyInvariants() { faults.append("invariants broken") }
            if outcome == .lineTooLong {
                // What the refusal threw away and what went before it add up to what was fed.
                if delivered.count + framer.discardedByteCount != end { faults.append("\(delivered.count) delivered + \(framer.discardedByteCount) discarded of \(end) fed") }
                return (delivered, true, faults)
            }
        }
        framer.finish { run in
            let bytes = Span<UInt8>(_bytes: run)
            if bytes.count > maximum { faults.append("a last line of \(bytes.count) bytes") }
            for index in 0..<bytes.count { delivered.append(bytes[index]) }
        }
        return (delivered, false, faults)
    }

    @Test("2 000 generated streams (lines of 0-40 bytes, CR, NUL), each cut whole, byte by byte and at random: the same bytes delivered, exactly up to the first over-long line, refused iff there is one", arguments: [3, 16, 41])
    func againstReference(maximum: Int) {
        var generator = Generator(state: UInt32(maximum))
        let alphabet = Array("ab:|c\r\u{0}#,.1".utf8)
        for _ in 0..<2_000 {
            var stream: [UInt8] = []
            for _ in 0..<generator.next(6) {
                for _ in 0..<generator.next(41) { stream.append(alphabet[generator.next(alphabet.count)]) }
                if generator.next(5) > 0 { stream.append(UInt8(ascii: "\n")) }
            }
            var cuts: [Int] = []
            var offset = generator.next(8) + 1
            while offset < stream.count {
                cuts.append(offset)
                offset += generator.next(12) + 1
            }
            let longLine = Self.referenceLines(stream).first { $0.length > maximum }
            let expected = longLine.map { Array(stream[..<$0.start]) } ?? stream
            for cutting in [[], Array(1..<max(1, stream.count)), cuts] {
                let (delivered, refused, faults) = Self.run(stream, cuts: cutting, maximum: maximum)
                #expect(faults.isEmpty, "\(faults) for \(stream)")
                #expect(refused == (longLine != nil), "for \(stream)")
                #expect(delivered == expected, "for \(stream), \(cutting.count) cuts")
                if !faults.isEmpty || refused != (longLine != nil) || delivered != expected { return }
            }
        }
    }
}
