@testable import RelayKernel
import Testing

/// `SendBufferPool.append` copies a line into its packet without `memcpy` up to 64 bytes
/// (`cl_copy_line`: overlapping loads and stores by size class).
@Suite("SendBufferPool: a line of any length is copied whole into its slot, and nothing around it changes")
struct SendBufferPoolTests {
    /// Every size class and its edges (0-3, 4-7, 8-16, 17-32, 33-64, longer), after an empty,
    /// a one-byte and a seven-byte line already in the slot (so the copy starts at every
    /// alignment).
    @Test("lengths 0 to 130 after 0, 1 and 7 bytes: the slot holds exactly the lines and their newlines; its neighbour is intact",
          arguments: [0, 1, 7])
    func everyLength(after prefixLength: Int) throws {
        var generator = SystemRandomNumberGenerator()
        for length in 0...130 {
            let prefix = (0..<prefixLength).map { _ in UInt8.random(in: 0x20...0x7e, using: &generator) }
            let line = (0..<length).map { _ in UInt8.random(in: 0...255, using: &generator) }
            // The slot ends exactly where the second newline goes: a byte written past the line
            // lands in the next slot, one written before it in the first line.
            let slotBytes = prefixLength + 1 + length + 1
            var pool = try SendBufferPool(capacity: 2, slotBytes: slotBytes)
            let acquired = [pool.acquire(for: 0), pool.acquire(for: 0)]
            let first = try #require(acquired[0])
            let second = try #require(acquired[1])
            let (low, high) = (min(first, second), max(first, second))
            let marker = [UInt8](repeating: UInt8(ascii: "M"), count: slotBytes - 1)
            pool.append(marker.span.bytes, to: high)
            pool.append(prefix.span.bytes, to: low)
            pool.append(line.span.bytes, to: low)
            let packed = pool.withBytes(ofSlot: low) { Array(copying: $0) }
            let neighbour = pool.withBytes(ofSlot: high) { Array(copying: $0) }
            #expect(packed == prefix + [10] + line + [10], "length \(length) after \(prefixLength)")
            #expect(neighbour == marker + [10], "length \(length) after \(prefixLength): the next slot changed")
            #expect(pool.length(of: low) == slotBytes)
        }
    }

    /// `append(_:toSlotIfRoom:)`, the common line's path: a line goes in while the slot, with
    /// its newline, stays within the packet limit (to the byte), and a line that does not fit
    /// leaves the slot exactly as it was; a limit above the slot's size is the slot's size.
    @Test("a line is appended only while the slot stays within the packet limit, to the byte; a refused line changes nothing",
          arguments: [(slotBytes: 64, packetLimit: 40 as Int?), (64, 64), (64, 1_000), (64, nil)])
    func appendIfRoom(slotBytes: Int, packetLimit: Int?) throws {
        var pool = try SendBufferPool(capacity: 1, slotBytes: slotBytes, packetLimit: packetLimit)
        let limit = min(packetLimit ?? slotBytes, slotBytes)
        #expect(pool.packetLimit == limit)
        let acquired = pool.acquire(for: 0)
        let slot = try #require(acquired)
        // (The pool is not copyable: each result is taken out before it is checked.)
        func state(_ pool: borrowing SendBufferPool) -> (length: Int, lines: Int, bytes: [UInt8]) {
            (pool.length(of: slot), pool.lineCount(of: slot), pool.withBytes(ofSlot: slot) { Array(copying: $0) })
        }
        let first = Array("a:1|c".utf8)
        let firstFits = pool.append(first.span.bytes, toSlotIfRoom: slot)
        #expect(firstFits)
        // Exactly the room left, newline included: fits; one byte more: refused.
        let room = limit - (first.count + 1)
        let tooLong = [UInt8](repeating: UInt8(ascii: "x"), count: room)
        let tooLongFits = pool.append(tooLong.span.bytes, toSlotIfRoom: slot)
        #expect(!tooLongFits)
        let afterRefusal = state(pool)
        #expect(afterRefusal.length == first.count + 1 && afterRefusal.lines == 1 && afterRefusal.bytes == first + [10])
        let exact = [UInt8](repeating: UInt8(ascii: "y"), count: room - 1)
        let exactFits = pool.append(exact.span.bytes, toSlotIfRoom: slot)
        #expect(exactFits)
        let full = state(pool)
        #expect(full.length == limit && full.lines == 2 && full.bytes == first + [10] + exact + [10])
        // Full: even an empty line (its newline) is refused.
        let emptyFits = pool.append([UInt8]().span.bytes, toSlotIfRoom: slot)
        #expect(!emptyFits)
        let stillFull = state(pool)
        #expect(stillFull.length == limit && stillFull.lines == 2)
    }
}

extension Array where Element == UInt8 {
    /// The bytes of `span`.
    init(copying span: RawSpan) {
        self = (0..<span.byteCount).map { span.unsafeLoad(fromByteOffset: $0, as: UInt8.self) }
    }
}
