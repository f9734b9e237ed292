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

    @Test("hold and drop keep the primary; every backend down drops under rehash")
    func policies() {
        for policy in [DownPolicy.hold, .drop] {
            var router = Router(backendCount: 3, policy: policy)
            router.setDown(1, true)
            #expect(router.route(name: "foo") == (policy == .hold ? .hold(1) : .drop(1)))  // foo → B
            #expect(router.route(name: "bar") == .send(0))
        }
        var router = Router(backendCount: 3)
        for backend in 0..<3 { router.setDown(backend, true) }
        #expect(router.route(name: "foo") == .drop(1))
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
}

@Suite("Hold buffer")
struct HoldBufferTests {
    func packet(_ text: String) -> [UInt8] { Array(text.utf8) }

    func popAll(_ buffer: inout HoldBuffer) -> [(String, Int)] {
        var out: [(String, Int)] = []
        while true {
            var bytes: [UInt8] = []
            guard let lines = buffer.popOldest({ piece in piece.withUnsafeBytes { bytes += $0 } }) else { break }
            out.append((String(decoding: bytes, as: UTF8.self), lines))
        }
        return out
    }

    @Test("packets come back oldest first, whole, with their line counts, across the wrap")
    func order() {
        var buffer = HoldBuffer(capacity: 64)
        for round in 0..<20 {
            let first = packet("a:\(round)|c\nb:1|c\n")
            let second = packet("c:\(round)|g\n")
            #expect(first.withUnsafeBytes { buffer.push($0.bytes, lines: 2) } == (true, 0))
            #expect(second.withUnsafeBytes { buffer.push($0.bytes, lines: 1) } == (true, 0))
            let popped = popAll(&buffer)
            #expect(popped.map(\.0) == ["a:\(round)|c\nb:1|c\n", "c:\(round)|g\n"])
            #expect(popped.map(\.1) == [2, 1])
            #expect(buffer.isEmpty && buffer.lines == 0)
        }
    }

    @Test("past the bound the oldest are dropped and their lines reported")
    func overflow() {
        var buffer = HoldBuffer(capacity: 40)
        let twelve = packet("x:1|c\ny:1|c\n")  // 12 bytes + 8 header = 20
        #expect(twelve.withUnsafeBytes { buffer.push($0.bytes, lines: 2) } == (true, 0))
        #expect(twelve.withUnsafeBytes { buffer.push($0.bytes, lines: 2) } == (true, 0))
        #expect(twelve.withUnsafeBytes { buffer.push($0.bytes, lines: 2) } == (true, 2))
        #expect(buffer.packets == 2 && buffer.lines == 4)
        let huge = [UInt8](repeating: UInt8(ascii: "z"), count: 40)
        #expect(huge.withUnsafeBytes { buffer.push($0.bytes, lines: 7) } == (false, 7))
        #expect(buffer.packets == 2)
    }
}
