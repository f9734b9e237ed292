import RelayKernel
import Testing
@testable import UringRelay

/// `RawSpan.lineStop(from:)`, the one scan per line that finds where a line stops (`\n`, `\r`
/// or NUL), whether that is a `\n` (or the end), and its first `:` (16 bytes at a time, the last
/// block overlapping the one before).
@Suite("Line stop scan")
struct LineStopTests {
    /// The answer byte by byte, as the definition says: the first `\n`, `\r` or NUL at or after
    /// `start` (else the end), whether that is a `\n` or the end, and the first `:` before it
    /// (else none).
    private static func reference(_ bytes: [UInt8], from start: Int) -> (stop: Int, endsAtNewline: Bool, colon: Int?) {
        var stop = bytes.count
        for index in start..<bytes.count where bytes[index] == 10 || bytes[index] == 13 || bytes[index] == 0 {
            stop = index
            break
        }
        let colon = (start..<stop).first { bytes[$0] == UInt8(ascii: ":") }
        return (stop, stop == bytes.count || bytes[stop] == 10, colon)
    }

    private static func lineStop(_ bytes: [UInt8], from start: Int) -> (stop: Int, endsAtNewline: Bool, colon: Int?) {
        bytes.withUnsafeBytes { $0.bytes.lineStop(from: start) }
    }

    /// A stop byte and a colon at every position around the 16-byte block edges, in lines of
    /// every length up to 50 bytes, from several starts.
    @Test(arguments: [UInt8(ascii: "\n"), UInt8(ascii: "\r"), 0])
    func stopAndColonAtEveryPosition(stopByte: UInt8) {
        var mismatches: [String] = []
        for length in 0...50 {
            for stopAt in [-1] + Array(0..<length) {
                for colonAt in [-1, 0, 1, 14, 15, 16, 17, 31, 32, 33, length - 1] where colonAt < length {
                    var bytes = [UInt8](repeating: UInt8(ascii: "a"), count: length)
                    if colonAt >= 0 { bytes[colonAt] = UInt8(ascii: ":") }
                    if stopAt >= 0 { bytes[stopAt] = stopByte }
                    for start in [0, 1, 3, 17] where start <= length {
                        let found = Self.lineStop(bytes, from: start)
                        let expected = Self.reference(bytes, from: start)
                        if found.stop != expected.stop || found.colon != expected.colon
                            || found.endsAtNewline != expected.endsAtNewline {
                            mismatches.append("length \(length), stop at \(stopAt), colon at \(colonAt), start \(start)")
                        }
                    }
                }
            }
        }
        #expect(mismatches.isEmpty)
    }

    /// A byte up to `\r` that stops nothing (a tab, 0x01, 0x0b) before the stop, in its block
    /// or one before, before or after the colon: the scan reads the first such byte of a block
    /// and takes it for the stop only when it is a `\n`, so every other one must be passed over
    /// to the stop itself, and `endsAtNewline` must say what that stop is.
    @Test(arguments: [UInt8(ascii: "\n"), UInt8(ascii: "\r"), 0])
    func controlBytesThatDoNotStop(stopByte: UInt8) {
        var mismatches: [String] = []
        for length in [20, 33, 40, 50] {
            for stopAt in [-1, 15, 16, 17, 31, 32, 33, length - 1] where stopAt < length {
                for otherAt in [0, 1, 14, 15, 16, 17, 30, 31, 32] where otherAt < length && otherAt != stopAt {
                    for colonAt in [-1, 2, 15, 16, 18, 33] where colonAt < length && colonAt != stopAt && colonAt != otherAt {
                        for other in [UInt8(ascii: "\t"), 1, 11] {
                            var bytes = [UInt8](repeating: UInt8(ascii: "a"), count: length)
                            if colonAt >= 0 { bytes[colonAt] = UInt8(ascii: ":") }
                            if stopAt >= 0 { bytes[stopAt] = stopByte }
                            bytes[otherAt] = other
                            for start in [0, 1] {
                                let found = Self.lineStop(bytes, from: start)
                                let expected = Self.reference(bytes, from: start)
                                if found.stop != expected.stop || found.colon != expected.colon
                                    || found.endsAtNewline != expected.endsAtNewline {
                                    mismatches.append(
                                        "length \(length), stop at \(stopAt), \(other) at \(otherAt), colon at \(colonAt), start \(start)")
                                }
                            }
                        }
                    }
                }
            }
        }
        #expect(mismatches.isEmpty)
    }

    /// Hand-written cases: the colon after the stop is not the line's, a byte below `\r` that
    /// is none of the three (a tab) does not stop the line, an empty rest stops at once.
    @Test(arguments: [
        ("api.requests.host-1.status_200:1|c\nb:2|c", 0, 34, 30),
        ("api.requests.host-1.status_200:1|c\nb:2|c", 35, 40, 36),
        ("no.colon.in.this.first.line.at.all\nb:2|c", 0, 34, nil),
        ("tab\tbefore.the.colon.and.more.bytes:1|c", 0, 39, 35),
        ("a.b.c.d.e.f.g.h.i.j.k.l.m.n:1|c\r\nx", 0, 31, 27),
        ("abcdefghijklmnopq\0rstu:1|c", 0, 17, nil),
        ("x:1|c", 5, 5, nil),
    ] as [(String, Int, Int, Int?)])
    func handWritten(text: String, start: Int, stop: Int, colon: Int?) {
        let bytes = Array(text.utf8)
        let found = Self.lineStop(bytes, from: start)
        #expect(found.stop == stop)
        #expect(found.colon == colon)
        #expect(found.endsAtNewline == (stop == bytes.count || bytes[stop] == UInt8(ascii: "\n")))
    }

    /// Lines longer than one block that end in `\r\n`, hold a `\r` or a NUL near a block edge
    /// take the scanner's general path and split as the line rules say.
    @Test(arguments: [
        ("abcdefghijklmno:1|c\r\nq:2|c", ["ok abcdefghijklmno abcdefghijklmno:1|c", "ok q q:2|c"]),
        ("abcdefghijklmnop:1|c\rq:2|c", ["ok abcdefghijklmnop abcdefghijklmnop:1|c\rq:2|c"]),
        ("abcdefghijklmnop:1|c\rq:2|c\r\nr:3|c\r", ["ok abcdefghijklmnop abcdefghijklmnop:1|c\rq:2|c", "ok r r:3|c"]),
        ("abcdefghijklmnopqrstuvwxyz0123:1|c\0\nq:2|c", ["bad nulByte", "ok q q:2|c"]),
        ("abcdefghijklmnop\0q:1|c\nr:2|c", ["bad nulByte", "ok r r:2|c"]),
        ("abcdefghijklmnopqrstuvwxyz0123456789\r\n:1|c", ["bad missingColon", "bad emptyName"]),
    ])
    func longLinesOnTheGeneralPath(text: String, expected: [String]) {
        #expect(scan(Array(text.utf8), checked: false) == expected)
        #expect(scan(Array(text.utf8), checked: true) == expected)
    }
}

/// The name hash the line scan computes on the way (`RawSpan.lineStop(from:hashingNameWith:)`):
/// the primary cache finds a name by it, so it must be the name's own `nameHash`, whatever the
/// line's place in the datagram.
@Suite("Line stop scan: the name's hash")
struct LineStopNameHashTests {
    private static let seeds = NameHashSeeds(state: 0x0123_4567_89ab_cdef, key: 0xfedc_ba98_7654_3210)

    /// Names of 1 to 70 bytes, values of 0 to 20, each line alone, at the end of a datagram and
    /// in the middle of one: wherever the scan gives a hash, it is the name's `nameHash`, and it
    /// gives one for every line with 16 bytes or more from its start to the datagram's end
    /// (the `:` in a block read whole or in the last one, read overlapping the one before).
    @Test(arguments: [0, 1, 15, 16, 17])
    func scannedHashIsTheNamesHash(paddingBefore: Int) {
        var mismatches: [String] = []
        var hashed = 0
        var expectedHashed = 0
        for nameLength in 1...70 {
            let name = (0..<nameLength).map { UInt8(ascii: "a") &+ UInt8(($0 * 7 + nameLength) % 26) }
            let expected = name.span.bytes.nameHash(seeds: Self.seeds)
            for valueLength in [0, 1, 5, 20] {
                let line = name + [UInt8(ascii: ":")] + [UInt8](repeating: UInt8(ascii: "7"), count: valueLength)
                for after in [[], Array("\nnext:1|c".utf8), Array("\nx".utf8) + [UInt8](repeating: 0x2e, count: 40)] as [[UInt8]] {
                    let before = [UInt8](repeating: UInt8(ascii: "b"), count: paddingBefore) + (paddingBefore > 0 ? [10] : [])
                    let datagram = before + line + after
                    let found = datagram.withUnsafeBytes { $0.bytes.lineStop(from: before.count, hashingNameWith: Self.seeds) }
                    let rest = datagram.count - before.count
                    // Hashed wherever the scan reads blocks: 16 bytes or more to the end.
                    let shouldHash = RawSpan.scanHashesNames && rest >= 16
                    if shouldHash { expectedHashed += 1 }
                    if let hash = found.nameHash {
                        hashed += 1
                        if hash != expected { mismatches.append("name \(nameLength), value \(valueLength), after \(after.count)") }
                    } else if shouldHash {
                        mismatches.append("no hash: name \(nameLength), value \(valueLength), after \(after.count)")
                    }
                    #expect(found.colon == before.count + nameLength)
                }
            }
        }
        #expect(mismatches.isEmpty)
        #expect(hashed == expectedHashed)
    }

    /// No `:` before the stop, or none at all: no hash (the line is dropped, or its key is not
    /// the bytes before a `:`), and none without seeds.
    @Test(arguments: [
        "abcdefghijklmnopqrstuvwxyz-no-colon-in-this-line\nb:1|c",
        "abcdefghijklmnopqrstuvwxyz-newline-first\nbefore:the-colon",
        "a-line-with-no-colon-at-all-and-long-enough",
    ])
    func noHashWithoutAColon(text: String) {
        let bytes = Array(text.utf8)
        #expect(bytes.withUnsafeBytes { $0.bytes.lineStop(from: 0, hashingNameWith: Self.seeds) }.nameHash == nil)
        let withColon = Array("a-twenty-byte-name-x:1|c\n".utf8)
        #expect(withColon.withUnsafeBytes { $0.bytes.lineStop(from: 0, hashingNameWith: nil) }.nameHash == nil)
        #expect(
            (withColon.withUnsafeBytes { $0.bytes.lineStop(from: 0, hashingNameWith: Self.seeds) }.nameHash != nil)
                == RawSpan.scanHashesNames)
    }
}
