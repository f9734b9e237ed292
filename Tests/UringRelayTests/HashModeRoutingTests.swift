@testable import RelayKernel
import Testing
@testable import UringRelay

/// The hash modes on structure: how evenly they spread names, what moves when a backend is
/// added or goes down, and what configurations they refuse. (Their exact answers are checked
/// against independent vectors in `HashRingTests` and `HashTests`.)
@Suite("Hash modes: spread, moves, rehash, configuration")
struct HashModeRoutingTests {
    static let names = (0..<20_000).map { "series.\($0 % 97).host-\($0).value" }

    static func backends(_ count: Int, weights: [Int]? = nil) -> [BackendAddress] {
        (0..<count).map { BackendAddress(host: "10.9.0.\($0 + 1)", port: 8125, weight: weights?[$0]) }
    }

    static func shares(_ router: Router) -> [Double] {
        var counts = [Int](repeating: 0, count: router.backendCount)
        for name in names { counts[router.backend(forName: name)] += 1 }
        return counts.map { Double($0) / Double(names.count) }
    }

    @Test("equal backends get about equal shares", arguments: HashMode.allCases, [2, 5, 9])
    func evenShares(_ mode: HashMode, _ count: Int) {
        // 40 points per backend (etsy) leave the widest spread; a broken ring (points of one
        // backend, a lookup stuck at one end) falls far outside these bounds.
        for (backend, share) in Self.shares(Router(backends: Self.backends(count), hashMode: mode)).enumerated() {
            #expect(share > 0.6 / Double(count) && share < 1.5 / Double(count), "backend \(backend): \(share)")
        }
    }

    @Test("weights 1, 2, 3 give shares near 1/6, 2/6, 3/6", arguments: [HashMode.etsy, .ketama])
    func weightedShares(_ mode: HashMode) {
        let shares = Self.shares(Router(backends: Self.backends(3, weights: [1, 2, 3]), hashMode: mode))
        for (backend, share) in shares.enumerated() {
            let target = Double(backend + 1) / 6
            #expect(share > 0.7 * target && share < 1.3 * target, "backend \(backend): \(share)")
        }
    }

    @Test("adding a backend moves names only onto it, about 1/(n+1) of them", arguments: HashMode.allCases, [2, 3, 4, 8])
    func addingMovesOntoNewOnly(_ mode: HashMode, _ count: Int) {
        // For these counts every backend keeps its points when one is added (40 or 160 each);
        // where the point count changes with n (etsy at 7 backends) a few names also move
        // between old backends, as in proxy.js itself.
        let before = Router(backends: Self.backends(count), hashMode: mode)
        let after = Router(backends: Self.backends(count + 1), hashMode: mode)
        var moved = 0
        for name in Self.names where before.backend(forName: name) != after.backend(forName: name) {
            moved += 1
            #expect(after.backend(forName: name) == count, "\(name) moved between old backends")
        }
        let fraction = Double(moved) / Double(Self.names.count)
        #expect(fraction > 0.6 / Double(count + 1) && fraction < 1.5 / Double(count + 1), "moved \(fraction)")
    }

    @Test("rehash: only a dead backend's names move, spread over the live ones; a second death moves only its own", arguments: HashMode.allCases)
    func rehashMovesOnlyTheDead(_ mode: HashMode) {
        var router = Router(backends: Self.backends(5), hashMode: mode, policy: .rehash)
        let healthy = Self.names.map { router.backend(forName: $0) }
        router.setDown(2, true)
        var received = [Int](repeating: 0, count: 5)
        var afterFirst: [Int] = []
        for (name, primary) in zip(Self.names, healthy) {
            let target: Int
            switch router.route(name: name) {
            case .send(let backend):
                #expect(backend == primary && primary != 2, "\(name)")
                target = backend
            case .rehash(let from, let to):
                #expect(from == 2 && primary == 2 && to != 2, "\(name)")
                target = to
                received[to] += 1
            default:
                Issue.record("\(name): \(router.route(name: name))")
                target = -1
            }
            afterFirst.append(target)
        }
        // Each live backend takes a part (a quarter on average; etsy's 40 points per backend
        // leave the parts uneven).
        let movedAway = healthy.filter { $0 == 2 }.count
        for live in [0, 1, 3, 4] {
            #expect(Double(received[live]) > 0.04 * Double(movedAway), "backend \(live) took \(received[live]) of \(movedAway)")
        }
        router.setDown(4, true)
        for (index, name) in Self.names.enumerated() {
            let target: Int
            switch router.route(name: name) {
            case .send(let backend): target = backend
            case .rehash(_, let to): target = to
            default: target = -1
            }
            #expect(target != 2 && target != 4)
            if afterFirst[index] != 4 { #expect(target == afterFirst[index], "\(name) moved though its backend lives") }
        }
    }

    /// Walking clockwise past a dead backend's points is what the peers do when they take it off
    /// the ring (proxy.js's `ring.remove`, twemproxy's `auto_eject_hosts`) wherever the live
    /// backends keep their point counts: here, 5 backends to 4 or 3 (40 and 160 points each).
    @Test("on a ring, rehash equals the ring rebuilt without the dead backends", arguments: [HashMode.etsy, .ketama], [[1], [0, 3]])
    func rehashIsRingWithoutDead(_ mode: HashMode, _ dead: [Int]) {
        let all = Self.backends(5)
        var router = Router(backends: all, hashMode: mode)
        for backend in dead { router.setDown(backend, true) }
        let live = all.indices.filter { !dead.contains($0) }
        let rebuilt = Router(backends: live.map { all[$0] }, hashMode: mode)
        for name in Self.names {
            let target: Int
            switch router.route(name: name) {
            case .send(let backend): target = backend
            case .rehash(_, let to): target = to
            default: target = -1
            }
            #expect(target == live[rebuilt.backend(forName: name)], "\(name)")
        }
    }

    @Test("hold, drop and failing open decide by the ring's primary", arguments: [HashMode.etsy, .ketama])
    func otherPolicies(_ mode: HashMode) {
        let name = "policy.metric"
        let primary = Router(backends: Self.backends(3), hashMode: mode).backend(forName: name)
        var hold = Router(backends: Self.backends(3), hashMode: mode, policy: .hold)
        var drop = Router(backends: Self.backends(3), hashMode: mode, policy: .drop)
        hold.setDown(primary, true)
        drop.setDown(primary, true)
        #expect(hold.route(name: name) == .hold(primary))
        #expect(drop.route(name: name) == .drop(primary))
        var open = Router(backends: Self.backends(3), hashMode: mode, policy: .rehash)
        for backend in 0..<3 { open.setDown(backend, true) }
        #expect(open.isFailingOpen)
        #expect(open.route(name: name) == .send(primary))
    }

    @Test("a processor routes a dead backend's lines to its rehash target and counts them", arguments: HashMode.allCases)
    func processorRehash(_ mode: HashMode) throws {
        let pool = BackendPool(
            backends: Self.backends(4), addresses: (0..<4).map { SocketAddress(numericHost: "10.9.0.\($0 + 1)", port: 8125)! },
            hashMode: mode, policy: .rehash)
        var downPool = pool
        downPool.down[1] = true
        let router = Router(pool: downPool)
        #expect(router.hashMode == mode && router.down == [false, true, false, false])
        var processor = try DatagramProcessor(router: router, packetBytes: 1400, maxDatagramBytes: 8192)
        var expected = [String](repeating: "", count: 4)
        var rehashed: UInt64 = 0
        for name in Self.names.prefix(400) {
            let line = "\(name):1|c"
            switch router.route(name: name) {
            case .send(let backend): expected[backend] += line + "\n"
            case .rehash(let from, let to):
                #expect(from == 1)
                expected[to] += line + "\n"
                rehashed += 1
            default: Issue.record("\(name)")
            }
            DatagramProcessorTests.receive(line, into: &processor)
        }
        #expect(rehashed > 40)
        let byBackend = DatagramProcessorTests.flush(&processor)
        #expect((0..<4).map { byBackend[$0, default: ""] } == expected)
        #expect(byBackend[1] == nil)
        #expect(processor.counters[.linesRehashedAway, backend: 1] == rehashed)
    }

    @Test("weights: HOST:PORT[:INSTANCE]=WEIGHT", arguments: [
        ("10.0.0.1:8125=2", "10.0.0.1:8125", 2 as Int?),
        ("10.0.0.1:8125:a=3", "10.0.0.1:8125:a", 3),
        ("[::1]:8125:b=65535", "[::1]:8125:b", 65_535),
        ("statsd.local:9125", "statsd.local:9125", nil),
    ])
    func weightSyntax(_ text: String, _ identity: String, _ weight: Int?) throws {
        let backend = try BackendAddress(parsing: text)
        #expect(backend.description == identity)
        #expect(backend.weight == weight)
    }

    @Test("bad weights are refused, naming the weight", arguments: [
        "10.0.0.1:8125=0", "10.0.0.1:8125=", "10.0.0.1:8125=x", "10.0.0.1:8125=+2", "10.0.0.1:8125=65536",
        "10.0.0.1:8125:a=b", "10.0.0.1:8125=2=3",
    ])
    func badWeights(_ text: String) {
        #expect {
            try BackendAddress(parsing: text)
        } throws: { error in
            (error as? ConfigurationError)?.description.contains("weight after '=' must be 1-65535") == true
        }
    }

    @Test("weights under jump, and a weight that leaves a backend no point, are refused")
    func refusedConfigurations() throws {
        var configuration = RelayConfiguration(backends: try HashVectors.parse(["10.0.0.1:8125", "10.0.0.2:8125=2"]))
        #expect(throws: ConfigurationError.self) { try configuration.validate() }
        configuration.hashMode = .ketama
        try configuration.validate()
        configuration.hashMode = .etsy
        try configuration.validate()
        // 100:1 gives the light backend floor(1/101 * 40 * 2) = 0 points on the etsy ring.
        configuration.backends = try HashVectors.parse(["10.0.0.1:8125=100", "10.0.0.2:8125"])
        #expect {
            try configuration.validate()
        } throws: { error in
            (error as? ConfigurationError)?.description.contains("no point on the etsy ring") == true
        }
    }

    /// Expected values computed apart from the relay (Python, FNV-1a 64 over the same text).
    @Test("the ring fingerprint includes the hash mode and weights other than 1", arguments: [
        (HashMode.jump, ["10.0.0.1:8125", "10.0.0.2:8125"], "d0db1fad0c5fbcb6"),
        (.etsy, ["10.0.0.1:8125", "10.0.0.2:8125"], "dcb2f7a35e772ec7"),
        (.ketama, ["10.0.0.1:8125", "10.0.0.2:8125"], "bf4d8f2e32c4fe03"),
        (.ketama, ["10.0.0.1:8125=1", "10.0.0.2:8125"], "bf4d8f2e32c4fe03"),
        (.ketama, ["10.0.0.1:8125=2", "10.0.0.2:8125"], "41d0ac7dcdc3489c"),
        (.etsy, ["10.0.0.1:8125:a=3", "10.0.0.2:8125"], "8e512a6a2576c832"),
    ])
    func fingerprint(_ mode: HashMode, _ specs: [String], _ expected: String) throws {
        let backends = try HashVectors.parse(specs)
        let pool = BackendPool(
            backends: backends, addresses: backends.map { SocketAddress(numericHost: $0.host, port: $0.port)! },
            hashMode: mode, policy: .rehash)
        #expect(pool.ringFingerprint == expected)
    }
}
