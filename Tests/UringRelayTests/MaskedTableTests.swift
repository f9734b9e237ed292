import RelayKernel
import Testing

@Suite("masked table")
struct MaskedTableTests {
    @Test("a table is the next power of two at or above the size asked for, every slot filled", arguments: [
        (0, 1), (1, 1), (2, 2), (3, 4), (64, 64), (65, 128), (32_768, 32_768),
    ])
    func rounding(asked: Int, expected: Int) {
        let table = MaskedTable<UInt64>(repeating: 7, minimumCount: asked)
        #expect(table.count == expected)
        #expect(table.mask == expected - 1)
        #expect((0..<expected).allSatisfy { table[wrapping: $0] == 7 })
    }

    @Test("any index, negative or past the end, names slot index & mask: writes land there and nowhere else")
    func wrapping() {
        var table = MaskedTable<Int32>(repeating: 0, minimumCount: 8)
        let indices = [0, 7, 8, 15, -1, -8, Int.max, Int.min, 1 << 40 | 3]
        for (value, index) in indices.enumerated() {
            table[wrapping: index] = Int32(value + 1)
            #expect(table[wrapping: index & 7] == Int32(value + 1), "index \(index)")
            #expect(table[wrapping: index] == table[wrapping: index &+ 8], "index \(index) and one turn later")
        }
        // The last write to each slot is what it holds; slots no index named stay 0.
        var expected = [Int32](repeating: 0, count: 8)
        for (value, index) in indices.enumerated() { expected[index & 7] = Int32(value + 1) }
        #expect((0..<8).map { table[wrapping: $0] } == expected)
    }
}
