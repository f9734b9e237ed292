@testable import RelayKernel
import RoutingReference
import Testing
@testable import UringRelay

@Suite("FNV-1a 64 and jump consistent hash")
struct HashTests {
    /// Published FNV-1a 64 vectors (Landon Curt Noll's test suite) and the brief's own.
    @Test(arguments: [
        ("", 0xcbf2_9ce4_8422_2325 as UInt64),
        ("a", 0xaf63_dc4c_8601_ec8c),
        ("b", 0xaf63_df4c_8601_f1a5),
        ("foobar", 0x8594_4171_f739_67e8),
        ("chongo was here!\n", 0x4681_0940_eff5_f915),
    ])
    func fnv1a64(_ input: String, _ expected: UInt64) {
        #expect(FNV1a.hash64(input) == expected)
    }

    /// The eight-bytes-a-turn loop (`RawSpan.fnv1a64`) against the byte-at-a-time reference, at
    /// every length from 0 to 70 (every tail of four, two and one bytes after 0-8 turns), from
    /// the offset basis and from a seed as a `--metrics-prefix` leaves it.
    @Test("the unrolled FNV-1a 64 equals the byte loop at every length and seed")
    func unrolledMatchesReference() {
        var generator = SystemRandomNumberGenerator()
        let bytes = (0..<70).map { _ in UInt8.random(in: 0...255, using: &generator) }
        let prefixSeed = ReferenceRouting.fnv1a64("eu-west.")
        for length in 0...bytes.count {
            let input = Array(bytes.prefix(length))
            #expect(FNV1a.hash64(input.span.bytes) == ReferenceRouting.fnv1a64(input), "length \(length)")
            #expect(
                input.span.bytes.fnv1a64(continuing: prefixSeed) == ReferenceRouting.fnv1a64(Array("eu-west.".utf8) + input),
                "length \(length) after a prefix")
        }
    }

    /// Vectors shared by the Go, C, Python and Elixir jump hash implementations.
    @Test(arguments: [
        (UInt64(1), 1, 0), (42, 57, 43), (0xDEAD_10CC, 1, 0), (0xDEAD_10CC, 666, 361), (256, 1024, 520),
        (0, 1, 0), (3, 1, 0), (0, 2, 0), (4, 2, 1), (7, 2, 0), (1, 128, 55), (129, 128, 120),
        (128, 100_000_000, 38_172_097), (UInt64.max, 128, 92),
    ])
    func jumpHash(_ key: UInt64, _ buckets: Int, _ expected: Int) {
        #expect(JumpHash.bucket(for: key, buckets: buckets) == expected)
    }

    @Test("the jump hash agrees with the reference loop on every key",
          arguments: [1, 2, 3, 5, 8, 57, 1000, 1 << 20, Int(Int32.max)])
    func jumpHashMatchesReference(_ buckets: Int) {
        // splitmix64 from a fixed seed: the same 20 000 keys every run, so a failure reproduces.
        var state: UInt64 = 0x5eed
        var keys = (0..<20_000).map { _ in
            state &+= 0x9e37_79b9_7f4a_7c15
            return Router.mix(state, 0)
        }
        keys += (0..<2_000).map { FNV1a.hash64("metric.\($0)") } + [0, 1, .max, .max - 1, 1 << 63]
        for key in keys {
            #expect(JumpHash.bucket(for: key, buckets: buckets) == ReferenceRouting.jump(key, buckets), "key \(key)")
        }
    }

    /// The Go StatsRelay's routing, with backends A B C in that order.
    @Test(arguments: [
        ("foo", 1), ("bar", 0), ("foobar", 1), ("changed", 0), ("a", 2), ("statsrelay.statsProcessed", 2),
    ])
    func goStatsRelayRouting(_ name: String, _ backend: Int) {
        #expect(Router(backendCount: 3).backend(forName: name) == backend)
        var bytes = Array(name.utf8)
        let viaSpan = bytes.withUnsafeMutableBytes { Router(backendCount: 3).backend(forKey: UnsafeRawBufferPointer($0).bytes) }
        #expect(viaSpan == backend)
    }

    @Test("adding a backend moves keys only onto the new backend", arguments: [1, 2, 3, 7, 16])
    func consistency(_ backends: Int) {
        var moved = 0
        for index in 0..<20_000 {
            let key = FNV1a.hash64("metric.\(index)")
            let before = JumpHash.bucket(for: key, buckets: backends)
            let after = JumpHash.bucket(for: key, buckets: backends + 1)
            #expect(after == before || after == backends)
            if after != before { moved += 1 }
        }
        // About 1/(n+1) of the keys move; far fewer or far more means a broken hash.
        let expected = 20_000 / (backends + 1)
        #expect(moved > expected / 2 && moved < expected * 2)
    }

    // Fixed vectors for the rehash candidates, computed from the definitions by
    // Tests/Vectors/rehash_vectors.py (FNV-1a 64, the float64 jump hash, splitmix64's finaliser as the
    // mixer, first live candidate): a change to the mixer or to the candidate rule fails here,
    // where no value is taken from the router itself. Relays of different versions behind one
    // balancer must agree on these.
    static let mixVectors: [(UInt64, UInt64, UInt64)] = [
        (0x0000000000000000, 0, 0x0000000000000000),
        (0x0000000000000000, 1, 0xe220a8397b1dcdaf),
        (0xdcb27518fed9d577, 1, 0x2e42db5a5768ac8d),
        (0xdcb27518fed9d577, 2, 0x6bff6783ec363485),
        (0xffffffffffffffff, 64, 0xf63b7b9046fea981),
        (0x0123456789abcdef, 7, 0xb8fc5b1060708c05),
    ]
    static let rehashVectors: [(String, Int, [Int], Int, Int)] = [
        ("foo", 3, [1], 1, 2),
        ("foobar", 3, [1], 1, 2),
        ("users.unique", 3, [1], 1, 0),
        ("svc.1.metric", 3, [1], 1, 2),
        ("svc.3.metric", 3, [1], 1, 2),
        ("svc.8.metric", 3, [1], 1, 2),
        ("svc.10.metric", 3, [1], 1, 0),
        ("svc.11.metric", 3, [1], 1, 0),
        ("bar", 3, [0], 0, 2),
        ("changed", 3, [0], 0, 1),
        ("api.requests.host-7.status_200", 3, [0], 0, 2),
        ("svc.0.metric", 3, [0], 0, 2),
        ("changed", 5, [0], 0, 1),
        ("api.requests.host-7.status_200", 5, [0], 0, 4),
        ("svc.0.metric", 5, [0], 0, 2),
        ("bar", 5, [0, 3], 3, 4),
        ("changed", 5, [0, 3], 0, 1),
        ("api.requests.host-7.status_200", 5, [0, 3], 0, 4),
        ("svc.0.metric", 5, [0, 3], 0, 2),
        ("svc.9.metric", 5, [0, 3], 3, 2),
        ("svc.10.metric", 5, [0, 3], 3, 4),
        ("foobar", 8, [3, 5, 6], 5, 2),
        ("svc.3.metric", 8, [3, 5, 6], 6, 4),
        ("svc.9.metric", 8, [3, 5, 6], 3, 1),
        ("svc.10.metric", 8, [3, 5, 6], 6, 7),
        ("foo", 8, [0, 1, 2, 3], 1, 5),
        ("changed", 8, [0, 1, 2, 3], 0, 4),
        ("a", 8, [0, 1, 2, 3], 2, 7),
        ("api.requests.host-7.status_200", 8, [0, 1, 2, 3], 0, 5),
        ("db.query.latency.3", 8, [0, 1, 2, 3], 2, 4),
        ("queue.depth.q12", 8, [0, 1, 2, 3], 2, 4),
        ("users.unique", 8, [0, 1, 2, 3], 1, 4),
        ("svc.5.metric", 8, [0, 1, 2, 3], 2, 5),
        ("svc.6.metric", 8, [0, 1, 2, 3], 2, 4),
        ("svc.9.metric", 8, [0, 1, 2, 3], 3, 5),
        ("svc.11.metric", 8, [0, 1, 2, 3], 1, 7),
    ]

    @Test("the rehash mixer is splitmix64's finaliser of hash + attempt × 0x9e3779b97f4a7c15", arguments: mixVectors)
    func rehashMixer(_ hash: UInt64, _ attempt: UInt64, _ mixed: UInt64) {
        #expect(Router.mix(hash, attempt) == mixed)
    }

    @Test("a key whose primary is down goes to its first live candidate, as computed from the definition",
          arguments: rehashVectors)
    func rehashTargets(_ name: String, _ backends: Int, _ down: [Int], _ primary: Int, _ target: Int) {
        var router = Router(backendCount: backends, policy: .rehash)
        for backend in down { router.setDown(backend, true) }
        #expect(Router(backendCount: backends).backend(forName: name) == primary)
        #expect(router.route(name: name) == .rehash(from: primary, to: target))
    }
}
