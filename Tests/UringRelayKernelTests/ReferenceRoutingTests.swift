import RoutingReference
import Testing

@Suite("The tests' reference routing agrees with the fixed vectors", .onOwnThread)
struct ReferenceRoutingTests {
    @Test("primaries: the Go StatsRelay's choices for backends A B C", arguments: [
        ("foo", 1), ("bar", 0), ("foobar", 1), ("changed", 0), ("a", 2), ("statsrelay.statsProcessed", 2),
    ])
    func primaries(_ name: String, _ backend: Int) {
        #expect(ReferenceRouting.primary(name, backends: 3) == backend)
    }

    /// A few rows of `HashTests.rehashVectors` (from Tests/Vectors/rehash_vectors.py).
    @Test("rehash targets", arguments: [
        ("foo", 3, [1], 2), ("users.unique", 3, [1], 0), ("bar", 3, [0], 2), ("changed", 3, [0], 1),
        ("bar", 5, [0, 3], 4), ("foobar", 8, [3, 5, 6], 2), ("foo", 8, [0, 1, 2, 3], 5), ("a", 8, [0, 1, 2, 3], 7),
    ])
    func rehashTargets(_ name: String, _ backends: Int, _ down: [Int], _ target: Int) {
        #expect(ReferenceRouting.rehashed(name, backends: backends, down: Set(down)) == target)
    }

    @Test("the mixer", arguments: [
        (UInt64(0), UInt64(1), UInt64(0xe220_a839_7b1d_cdaf)), (0xffff_ffff_ffff_ffff, 64, 0xf63b_7b90_46fe_a981),
    ])
    func mixer(_ hash: UInt64, _ attempt: UInt64, _ mixed: UInt64) {
        #expect(ReferenceRouting.mix(hash, attempt) == mixed)
    }
}
