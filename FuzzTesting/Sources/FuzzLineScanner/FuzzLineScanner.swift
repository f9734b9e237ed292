import FuzzSupport
import UringRelay

// Fuzzes `LineScanner.next` over one datagram (the whole input) and checks that
// - it yields exactly the lines of `ReferenceSplitter`, in order, with the same bounds and
//   verdicts: no line split, merged, moved or classified differently;
// - every line it returns lies within the datagram and the offset only moves forward, so the
//   scan ends within one step per byte;
// - the per-datagram shortcuts (`mayContainNul: false`, `mayContainCarriageReturn: false`
//   where the datagram has neither byte) change nothing;
// - no byte outside the datagram is read and none is written: the input is scanned in a
//   read-only copy with an inaccessible page right after it, and in one with that page right
//   before it.

/// Scans `datagram` to the end and returns every line, checking bounds and progress.
func scan(_ datagram: RawSpan, mayContainNul: Bool, mayContainCarriageReturn: Bool) -> [LineScanner.Line] {
    var lines: [LineScanner.Line] = []
    var offset = 0
    while let line = LineScanner.next(
        in: datagram, from: &offset, mayContainNul: mayContainNul, mayContainCarriageReturn: mayContainCarriageReturn) {
        if case .valid(let start, let end, let key) = line {
            require(0 <= start && start <= key.lowerBound && key.lowerBound < key.upperBound && key.upperBound <= end
                        && end <= datagram.byteCount,
                    "line \(start)..<\(end) (key \(key)) outside a datagram of \(datagram.byteCount) bytes")
            require(offset > end || offset == datagram.byteCount, "offset \(offset) did not pass the line ending at \(end)")
        }
        require(offset <= datagram.byteCount, "offset \(offset) past the datagram's \(datagram.byteCount) bytes")
        lines.append(line)
        require(lines.count <= datagram.byteCount, "more lines than bytes: the scan does not move forward")
    }
    require(offset == datagram.byteCount, "the scan stopped at \(offset) of \(datagram.byteCount)")
    return lines
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzLineScanner(_ data: UnsafeRawPointer?, _ size: Int) -> CInt {
    let input = UnsafeRawBufferPointer(start: data, count: size)
    let bytes = Array(input)
    let expected = ReferenceSplitter.lines(bytes)
    let hasNul = bytes.contains(0)
    let hasCarriageReturn = bytes.contains(UInt8(ascii: "\r"))
    for side in [GuardedBytes.Side.after, .before] {
        let guarded = GuardedBytes(copying: input, guard: side)
        guarded.withSpan { datagram in
            for (nulFlag, crFlag) in [(true, true), (hasNul, hasCarriageReturn)] {
                let lines = scan(datagram, mayContainNul: nulFlag, mayContainCarriageReturn: crFlag)
                require(lines == expected,
                        "scanner \(lines) != reference \(expected) for \"\(describe(bytes))\" (NUL check \(nulFlag), CR check \(crFlag))")
            }
        }
    }
    return 0
}
