@testable import RelayKernel
import Testing
@testable import UringRelay

/// The etsy and ketama modes against `Tests/Vectors/hash-vectors.tsv`, which an independent
/// Python implementation of each algorithm's definition wrote (and which node's own arithmetic
/// confirms for etsy, `node Tests/Vectors/check_etsy.js`, and C's float arithmetic for ketama's
/// point counts, `Tests/Vectors/check_ketama_points.c`).
@Suite("etsy and ketama hash rings against independent vectors")
struct HashRingTests {
    @Test("the vector file was read whole")
    func vectorsPresent() {
        #expect(HashVectors.pools.count == 18)
        #expect(HashVectors.pools.allSatisfy { $0.routes.count == 319 })
        #expect(HashVectors.points.count == 92)
        #expect(HashVectors.rings.map(\.points.count) == [120, 316])
    }

    @Test("points per backend, equal and weighted (39 each for 7 and 14 etsy backends)", arguments: HashVectors.points)
    func pointCounts(_ vector: HashVectors.Points) throws {
        let backends = try HashVectors.parse(vector.backends)
        #expect(HashRing.pointCounts(mode: vector.mode, weights: backends.map { $0.weight ?? 1 }) == vector.counts)
        guard !vector.counts.contains(0) else { return }  // such pools are refused (HashMode.check)
        let ring = HashRing(mode: vector.mode, backends: backends)
        var built = [Int](repeating: 0, count: backends.count)
        for owner in ring.owners { built[Int(owner)] += 1 }
        #expect(built == vector.counts)
    }

    @Test("the whole ring: every point and its owner, in order", arguments: HashVectors.rings)
    func wholeRing(_ vector: HashVectors.Ring) throws {
        let ring = HashRing(mode: vector.mode, backends: try HashVectors.parse(vector.backends))
        #expect(ring.points == vector.points)
        #expect(ring.owners.map(Int.init) == vector.owners)
    }

    @Test("each name's key value and backend", arguments: HashVectors.pools)
    func routes(_ pool: HashVectors.Pool) throws {
        let router = Router(backends: try HashVectors.parse(pool.backends), hashMode: pool.mode)
        for route in pool.routes {
            #expect(Router.keyValue(forName: route.name, hashMode: pool.mode) == UInt64(route.value), "\(route.name)")
            #expect(router.backend(forName: route.name) == route.owner, "\(route.name)")
            #expect(router.route(name: route.name) == .send(route.owner), "\(route.name)")
        }
    }

    @Test("the relay's per-line path (cache, pipelined hash) packs each line for the vector's backend", arguments: HashVectors.pools)
    func processorPath(_ pool: HashVectors.Pool) throws {
        let router = Router(backends: try HashVectors.parse(pool.backends), hashMode: pool.mode)
        var processor = try DatagramProcessor(router: router, packetBytes: 1400, maxDatagramBytes: 8192)
        var expected = [String](repeating: "", count: pool.backends.count)
        // Twice over, so the second pass is answered from the cache.
        let routes = pool.routes.filter { !$0.name.isEmpty }
        for (pass, route) in (routes + routes).enumerated() {
            let line = "\(route.name):\(pass)|c"
            expected[route.owner] += line + "\n"
            DatagramProcessorTests.receive(line, into: &processor)
        }
        let byBackend = DatagramProcessorTests.flush(&processor)
        #expect((0..<pool.backends.count).map { byBackend[$0, default: ""] } == expected)
    }

    @Test("a value past the last point wraps to the first; a value equal to a point takes it", arguments: HashMode.allCases.filter(\.takesWeights))
    func lookupEdges(_ mode: HashMode) throws {
        let ring = HashRing(mode: mode, backends: try HashVectors.parse(["10.0.0.1:8125", "10.0.0.2:8125", "10.0.0.3:8125"]))
        #expect(ring.position(of: 0) == 0)
        #expect(ring.position(of: ring.points[0]) == 0)
        #expect(ring.position(of: ring.points[0] &+ 1) == 1)
        #expect(ring.position(of: ring.points[ring.count - 1]) == ring.count - 1)
        #expect(ring.position(of: ring.points[ring.count - 1] &+ 1) == 0)
        #expect(ring.position(of: .max) == (ring.points.last == .max ? ring.count - 1 : 0))
    }
}
