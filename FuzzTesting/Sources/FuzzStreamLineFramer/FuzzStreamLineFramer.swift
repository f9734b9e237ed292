import FuzzSupport
import UringRelay

// Fuzzes `StreamLineFramer` over one stream cut into reads. The input's first byte picks the
// longest line (1-64, or 8192 when its top bit is set), the next two bytes a seed for the cut
// points, the rest is the stream. Checks that
// - the framer stays consistent after every read (`verifyInvariants`: the partial line fits its
//   room and holds no `\n`);
// - every run delivered by `feed` ends with `\n`, and no line in it exceeds the maximum;
// - with no line over the maximum (the last, unterminated one included), every read is
//   `.framed` and the runs delivered, with what `finish` delivers, are the stream, byte for byte;
// - with one, some read answers `.lineTooLong`, and what was delivered before is exactly the
//   stream up to that line's first byte (no line of it, and nothing after it, goes on), and
//   the bytes it says it discarded (`discardedByteCount`) are the rest of what was fed;
// - the result is the same whatever the cuts: the stream whole in one read, one byte per read,
//   and the seeded cuts.

/// The stream's lines as (start, length without `\n`), the last possibly unterminated.
func referenceLines(_ stream: [UInt8]) -> [(start: Int, length: Int)] {
    var lines: [(Int, Int)] = []
    var start = 0
    for (index, byte) in stream.enumerated() where byte == UInt8(ascii: "\n") {
        lines.append((start, index - start))
        start = index + 1
    }
    if start < stream.count { lines.append((start, stream.count - start)) }
    return lines
}

/// Feeds `stream` cut at `cuts` (ascending offsets) and returns what was delivered and whether
/// a read was refused.
func run(_ stream: [UInt8], cuts: [Int], maximum: Int) -> (delivered: [UInt8], refused: Bool) {
    var framer = StreamLineFramer(maximumLineBytes: maximum)
    var delivered: [UInt8] = []
    var start = 0
    for end in cuts + [stream.count] where end >= start {
        let chunk = Array(stream[start..<end])
        start = end
        let outcome = framer.feed(chunk.span.bytes) { run in
            let bytes = Span<UInt8>(_bytes: run)
            require(bytes.count > 0 && bytes[bytes.count - 1] == UInt8(ascii: "\n"), "a run delivered by feed does not end with \\n")
            var lineStart = 0
            for index in 0..<bytes.count where bytes[index] == UInt8(ascii: "\n") {
                require(index - lineStart <= maximum, "a line of \(index - lineStart) bytes delivered, maximum \(maximum)")
                lineStart = index + 1
            }
            for index in 0..<bytes.count { delivered.append(bytes[index]) }
        }
        require(framer.verifyInvariants(), "invariants broken after a read")
        if outcome == .lineTooLong {
            require(delivered.count + framer.discardedByteCount == end, "delivered and discarded bytes do not add up to the bytes fed")
            return (delivered, true)
        }
    }
    framer.finish { run in
        let bytes = Span<UInt8>(_bytes: run)
        require(bytes.count <= maximum, "a last line of \(bytes.count) bytes delivered, maximum \(maximum)")
        for index in 0..<bytes.count { delivered.append(bytes[index]) }
    }
    return (delivered, false)
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzStreamLineFramer(_ data: UnsafeRawPointer?, _ size: Int) -> CInt {
    let input = Array(UnsafeRawBufferPointer(start: data, count: size))
    guard input.count >= 3 else { return 0 }
    let maximum = input[0] & 0x80 != 0 ? 8192 : Int(input[0] & 0x3f) + 1
    var seed = UInt32(input[1]) << 8 | UInt32(input[2])
    let stream = Array(input[3...])
    var cuts: [Int] = []
    var offset = 0
    while offset < stream.count {
        // A small generator: cut lengths of 1-32 bytes, from the seed.
        seed = seed &* 1_103_515_245 &+ 12_345
        offset += Int((seed >> 16) % 32) + 1
        if offset < stream.count { cuts.append(offset) }
    }
    let longLine = referenceLines(stream).first { $0.length > maximum }
    let expected = longLine.map { Array(stream[..<$0.start]) } ?? stream
    for cutting in [[], Array(1..<max(1, stream.count)), cuts] {
        let (delivered, refused) = run(stream, cuts: cutting, maximum: maximum)
        require(refused == (longLine != nil), "refused \(refused) for \"\(describe(stream))\" (maximum \(maximum))")
        require(delivered == expected, "delivered \"\(describe(delivered))\", expected \"\(describe(expected))\" (maximum \(maximum), \(cutting.count) cuts)")
    }
    return 0
}
