@testable import RelayKernel
import Testing
@testable import UringRelay

@Suite("Health tracking")
struct HealthTrackerTests {
    /// A run of results (true = check passed) and the state after each.
    @Test(arguments: [
        (2, 3, [false, false, false], ["up", "up", "down"]),
        (2, 3, [false, false, true, false, false], ["up", "up", "up", "up", "up"]),
        (2, 3, [false, false, false, true, true], ["up", "up", "down", "down", "up"]),
        (2, 3, [false, false, false, true, false, true, true], ["up", "up", "down", "down", "down", "down", "up"]),
        (1, 1, [false, true, false], ["down", "up", "down"]),
    ])
    func riseAndFall(_ rise: Int, _ fall: Int, _ results: [Bool], _ states: [String]) {
        var tracker = HealthTracker(rise: rise, fall: fall, now: 0)
        var seen: [String] = []
        for (time, result) in results.enumerated() {
            _ = tracker.record(success: result, reason: result ? nil : "refused", now: UInt64(time))
            seen.append(tracker.state.rawValue)
        }
        #expect(seen == states)
    }

    @Test("a change reports the new state once, with when it began")
    func reportsChanges() {
        var tracker = HealthTracker(rise: 1, fall: 2, now: 0)
        #expect(tracker.record(success: false, now: 10) == nil)
        #expect(tracker.record(success: false, reason: "timed out", now: 20) == .down)
        #expect(tracker.record(success: false, now: 30) == nil)
        #expect(tracker.since == 20)
        #expect(tracker.lastFailure == "timed out")
        #expect(tracker.record(success: true, now: 40) == .up)
        #expect(tracker.changes == 2)
    }
}

@Suite("Routing with backends down")
struct RouterHealthTests {
    static let names = (0..<20_000).map { "svc.\($0 % 50).metric.\($0)" }

    @Test("rehash moves only the dead backend's metrics, evenly, and they return on recovery",
          arguments: [(3, 1), (5, 0), (5, 4), (8, 3)])
    func rehashMovesOnlyTheDead(_ backends: Int, _ dead: Int) {
        let healthy = Router(backendCount: backends)
        var degraded = healthy
        degraded.setDown(dead, true)
        var movedTo = Array(repeating: 0, count: backends)
        for name in Self.names {
            let before = healthy.route(name: name)
            let after = degraded.route(name: name)
            guard case .send(let primary) = before else { Issue.record("healthy router did not send"); return }
            if primary == dead {
                guard case .rehash(let from, let to) = after else { Issue.record("\(name) not rehashed"); return }
                #expect(from == dead && to != dead)
                movedTo[to] += 1
            } else {
                #expect(after == before, "\(name) moved although its backend is up")
            }
        }
        // The dead backend's share spreads over every live backend, none taking the lot.
        let moved = movedTo.reduce(0, +)
        let fair = moved / (backends - 1)
        for backend in 0..<backends where backend != dead {
            #expect(movedTo[backend] > fair / 2 && movedTo[backend] < fair * 2, "backend \(backend) got \(movedTo[backend]) of \(moved)")
        }
        var recovered = degraded
        recovered.setDown(dead, false)
        for name in Self.names.prefix(2_000) { #expect(recovered.route(name: name) == healthy.route(name: name)) }
    }

    @Test("a second failure moves only the keys on the newly dead backend")
    func secondFailure() {
        var one = Router(backendCount: 5)
        one.setDown(1, true)
        var two = one
        two.setDown(3, true)
        for name in Self.names {
            let first = one.route(name: name)
            let second = two.route(name: name)
            let landed: Int
            switch first {
            case .send(let backend), .rehash(_, let backend): landed = backend
            default: Issue.record("unexpected \(first)"); return
            }
            if landed != 3 { #expect(second == first, "\(name) moved although it was not on the newly dead backend") }
        }
    }

    @Test("hold and drop keep the primary while another backend is up")
    func policies() {
        for policy in [DownPolicy.hold, .drop] {
            var router = Router(backendCount: 3, policy: policy)
            router.setDown(1, true)
            #expect(router.route(name: "foo") == (policy == .hold ? .hold(1) : .drop(1)))  // foo → B
            #expect(router.route(name: "bar") == .send(0))
        }
    }

    @Test("every backend down: rehash and drop fail open to each key's primary, hold still holds", arguments: [
        (3, DownPolicy.rehash, true), (3, .drop, true), (3, .hold, false), (1, .rehash, true), (1, .drop, true), (1, .hold, false),
    ])
    func allDownFailsOpen(_ backends: Int, _ policy: DownPolicy, _ failsOpen: Bool) {
        let healthy = Router(backendCount: backends, policy: policy)
        var router = healthy
        for backend in 0..<backends { router.setDown(backend, true) }
        #expect(router.isFailingOpen == failsOpen)
        for name in Self.names.prefix(2_000) {
            let primary = healthy.backend(forName: name)
            #expect(router.route(name: name) == (failsOpen ? .send(primary) : .hold(primary)), "\(name)")
        }
        // One backend back: failing open ends at once and the policy applies again.
        router.setDown(0, false)
        #expect(!router.isFailingOpen)
        for name in Self.names.prefix(2_000) {
            let primary = healthy.backend(forName: name)
            #expect(router.route(name: name) == Self.decision(primary: primary, onlyLive: 0, policy: policy), "\(name)")
        }
    }

    /// What the router must decide for a key when `onlyLive` is the one backend up.
    static func decision(primary: Int, onlyLive: Int, policy: DownPolicy) -> Router.Decision {
        switch policy {
        case _ where primary == onlyLive: .send(primary)
        case .rehash: .rehash(from: primary, to: onlyLive)
        case .hold: .hold(primary)
        case .drop: .drop(primary)
        }
    }

    @Test("one backend up: no failing open; every key routes as the policy says", arguments: DownPolicy.allCases)
    func oneUpIsUnchanged(_ policy: DownPolicy) {
        let healthy = Router(backendCount: 3, policy: policy)
        var router = healthy
        router.setDown(0, true)
        router.setDown(2, true)
        #expect(!router.isFailingOpen)
        for name in Self.names.prefix(2_000) {
            let primary = healthy.backend(forName: name)
            #expect(router.route(name: name) == Self.decision(primary: primary, onlyLive: 1, policy: policy), "\(name)")
        }
    }

    @Test("a name's cache hash reads every byte: any one byte changed in a name of 0 to 40 bytes changes it; equal names hash alike; each seed and the length change it")
    func nameHashReadsEveryByte() {
        func hash(_ bytes: [UInt8], seed: UInt64 = 0x5eed, key: UInt64 = 0x6b65_7973) -> UInt64 {
            bytes.span.bytes.nameHash(seeds: NameHashSeeds(state: seed, key: key))
        }
        var seen = Set<UInt64>()
        for length in 0...40 {
            let name = (0..<length).map { UInt8(ascii: "a") &+ UInt8($0 % 26) }
            let original = hash(name)
            #expect(hash(name) == original)
            #expect(hash(name, seed: 1) != original, "length \(length)")
            // An empty name reads no block: only the first seed is in its hash.
            #expect(length == 0 || hash(name, key: 1) != original, "length \(length)")
            // Names of one repeated byte differ only in their length.
            #expect(seen.insert(hash([UInt8](repeating: UInt8(ascii: "z"), count: length))).inserted, "length \(length)")
            for position in 0..<length {
                for flip: UInt8 in [0x01, 0x80] {
                    var changed = name
                    changed[position] ^= flip
                    #expect(hash(changed) != original, "length \(length), byte \(position)")
                }
            }
        }
    }

    @Test("the primary cache answers exactly what the jump hash computes", arguments: [
        // 64 entries are 32 sets: 31 backends is the most an entry holds, 32 turns the cache off.
        (1, 64), (3, 64), (7, 64), (64, 64), (3, 32_768), (30, 64), (31, 64), (32, 64), (40_000, 64),
    ])
    func primaryCache(_ backends: Int, _ entries: Int) {
        var cache = PrimaryCache(entries: entries, backendCount: backends)
        // 64 hashes that all fall into one set (the change to bits 29-34 cancels the change to
        // the low bits in the set index): many more than a set holds, told apart by their tags.
        let base = FNV1a.hash64("collide")
        let lookalikes = (0..<UInt64(64)).map { base ^ ($0 << 29) ^ $0 }
        for round in 0..<3 {
            for hash in Self.names.prefix(5_000).map(FNV1a.hash64) + lookalikes {
                #expect(cache.primary(forHash: hash) == JumpHash.bucket(for: hash, buckets: backends), "round \(round)")
            }
        }
    }

    /// Set `s`'s empty entries are the value `s` (`PrimaryCache`): no small hash, which could
    /// be mistaken for an entry xored with a bucket + 1, may be found before it is cached.
    @Test("an empty primary cache finds no hash, the small ones its empty entries are made of included")
    func primaryCacheEmptyEntriesMatchNothing() {
        var cache = PrimaryCache(entries: 64, backendCount: 7)
        let hashes = (0..<UInt64(256)) + (0..<UInt64(64)).map { (1 << 29) ^ $0 } + [UInt64.max, UInt64.max - 1]
        for hash in hashes {
            #expect(cache.cachedPrimary(for: cache.probe(hash)) == nil, "hash \(hash)")
        }
        for hash in hashes {
            #expect(cache.primary(forHash: hash) == JumpHash.bucket(for: hash, buckets: 7), "hash \(hash)")
        }
    }

    @Test("two names in one set of the primary cache are both kept; a third evicts the one cached first", arguments: [
        1, 2, 3,
    ])
    func primaryCacheSetHoldsTwo(_ newcomers: Int) {
        var cache = PrimaryCache(backendCount: 7)
        // Hashes that all fall into one set, as in the test above.
        let base = FNV1a.hash64("collide")
        let hashes = (0..<UInt64(newcomers)).map { base ^ ($0 << 29) ^ $0 }
        for hash in hashes { _ = cache.primary(forHash: hash) }
        for (index, hash) in hashes.enumerated() {
            let cached = cache.cachedPrimary(for: cache.probe(hash))
            if index == 0 && newcomers == 3 {
                #expect(cached == nil, "the first of three is evicted")
            } else {
                #expect(cached == JumpHash.bucket(for: hash, buckets: 7), "name \(index) of \(newcomers)")
            }
        }
    }
}
