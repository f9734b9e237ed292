import Foundation
import Testing
@testable import UringRelay
import RelayKernel

/// A held packet as the tests see it: its bytes and its line count.
private struct Held: Equatable, CustomStringConvertible {
    var bytes: [UInt8]
    var lines: Int
    var description: String { "\(bytes.count)B/\(lines)" }
}

/// A packet of `size` bytes whose content names its backend and sequence number, so order and
/// integrity are checked byte for byte.
private func packet(backend: Int, sequence: Int, size: Int) -> Held {
    var bytes = [UInt8](repeating: 0, count: size)
    var seed = UInt64(truncatingIfNeeded: backend &* 1_000_003 &+ sequence &* 7919 &+ size)
    for index in bytes.indices {
        seed = seed &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
        bytes[index] = UInt8(truncatingIfNeeded: seed >> 56)
    }
    return Held(bytes: bytes, lines: 1 + sequence % 5)
}

extension HoldStore {
    /// Holds a test packet.
    fileprivate mutating func hold(_ held: Held, backend: Int) -> Outcome {
        held.bytes.withUnsafeBytes { hold($0.bytes, lines: held.lines, backend: backend) }
    }

    /// Replays one packet of `backend` at `now`, joining its pieces.
    fileprivate mutating func replayOne(backend: Int, now: UInt64) -> Held? {
        var bytes: [UInt8] = []
        guard let lines = replayNext(backend: backend, now: now, { piece in piece.withUnsafeBytes { bytes += $0 } }) else {
            return nil
        }
        return Held(bytes: bytes, lines: lines)
    }

    /// Replays everything held for `backend`, unpaced (a second apart, with a rate and burst that
    /// let any packet through).
    fileprivate mutating func replayAll(backend: Int, from start: UInt64 = 1_000_000_000_000) -> [Held] {
        var out: [Held] = []
        var now = start
        for _ in 0..<1_000_000 {
            guard isHolding(backend) else { break }
            now += 1_000_000_000
            if let held = replayOne(backend: backend, now: now) { out.append(held) }
        }
        return out
    }
}

/// A budget whose replay rate never holds a test back (1 GiB/s with a 256 KiB burst).
private func unpacedBudget(total: Int, workers: Int = 1) -> HoldBudget {
    HoldBudget(totalBytes: total, replayBytesPerSecond: 1 << 30, workers: workers)
}

private let largePackets = 65_536

@Suite("Hold store")
struct HoldStoreTests {
    @Test("chunk sizes follow the total: 64 KiB from 4 MiB up, a 64th below, never under a page", arguments: [
        (67_108_864, 65_536), (4_194_304, 65_536), (2_097_152, 32_768), (1_048_576, 16_384), (262_144, 4_096),
        (4_096, 4_096), (0, 4_096),
    ])
    func chunkSizes(total: Int, chunk: Int) {
        let budget = unpacedBudget(total: total)
        #expect(budget.chunkBytes == max(chunk, MappedChunks.pageBytes))
        #expect(budget.chunkLimit == total / budget.chunkBytes)
    }

    /// Packet sizes that start, end and straddle 4 KiB chunk boundaries, including packets
    /// spanning several chunks, headers landing at a chunk's last 8 bytes, and empty packets.
    @Test("packets come back oldest first, whole, with their line counts, across chunk boundaries and chunk reuse",
          arguments: [[1, 7, 8, 9], [1_400], [4_088], [4_080, 8, 4_096], [9_000, 3, 12_289], [0, 1_399, 4_000, 65_000]])
    func fifoOrder(sizes: [Int]) {
        let budget = unpacedBudget(total: 256 << 10)  // 4 KiB chunks
        var store = HoldStore(backendCount: 3, budget: budget, packetBytes: largePackets)
        var sequence = 0
        // Rounds of holding and partly draining: the queue's head keeps moving through reused chunks.
        for round in 0..<6 {
            var expected: [Held] = []
            for _ in 0..<(1 + round % 3) {
                for size in sizes {
                    let held = packet(backend: 1, sequence: sequence, size: size)
                    sequence += 1
                    #expect(store.hold(held, backend: 1) == .init(stored: true, evictedBackend: -1, evictedLines: 0))
                    expected.append(held)
                }
            }
            #expect(store.heldPackets(of: 1) == expected.count)
            #expect(store.heldLines(of: 1) == expected.reduce(0) { $0 + $1.lines })
            #expect(store.heldBytes(of: 1) == expected.reduce(0) { $0 + $1.bytes.count })
            #expect(!store.isHolding(0) && !store.isHolding(2))
            #expect(store.replayAll(backend: 1) == expected)
            #expect(store.heldLines == 0 && store.heldPackets == 0 && store.bytesInUse == 0)
        }
        #expect(budget.bytesReserved == 0)
    }

    @Test("queues of different backends stay apart and keep their own order when interleaved")
    func interleavedBackends() {
        let budget = unpacedBudget(total: 1 << 20)
        var store = HoldStore(backendCount: 4, budget: budget, packetBytes: largePackets)
        var expected: [[Held]] = Array(repeating: [], count: 4)
        for sequence in 0..<400 {
            let backend = (sequence * 7) % 4
            let held = packet(backend: backend, sequence: sequence, size: 50 + (sequence * 37) % 3_000)
            let outcome = store.hold(held, backend: backend)
            #expect(outcome.stored)
            expected[backend].append(held)
        }
        for backend in 0..<4 {
            #expect(store.replayAll(backend: backend) == expected[backend])
        }
        #expect(store.bytesInUse == 0 && budget.bytesReserved == 0)
    }

    @Test("isHolding stays true until the last held packet is replayed, so live packets queue behind the replay")
    func holdingUntilDrained() {
        let budget = unpacedBudget(total: 1 << 20)
        var store = HoldStore(backendCount: 2, budget: budget, packetBytes: largePackets)
        let holdingBefore = store.isHolding(0)
        #expect(!holdingBefore)
        for sequence in 0..<30 { _ = store.hold(packet(backend: 0, sequence: sequence, size: 700), backend: 0) }
        var now: UInt64 = 1_000_000_000
        for remaining in (0..<30).reversed() {
            let holding = store.isHolding(0)
            #expect(holding)
            now += 1_000_000_000
            #expect(store.replayOne(backend: 0, now: now) != nil)
            #expect(store.isHolding(0) == (remaining > 0))
        }
        #expect(store.replayOne(backend: 0, now: now + 1_000_000_000) == nil)
    }

    @Test("two workers' stores never hold more than the shared total; past it the oldest are dropped and counted")
    func sharedBudget() {
        let budget = unpacedBudget(total: 256 << 10, workers: 2)  // 64 chunks of 4 KiB
        var first = HoldStore(backendCount: 2, budget: budget, packetBytes: largePackets)
        var second = HoldStore(backendCount: 2, budget: budget, packetBytes: largePackets)
        var offered = [[Held]](repeating: [], count: 4)  // worker × 2 + backend
        var dropped = [Int](repeating: 0, count: 4)
        for sequence in 0..<2_000 {
            let worker = sequence % 2
            let backend = (sequence / 2) % 2
            let held = packet(backend: backend, sequence: sequence, size: 300 + (sequence * 131) % 1_100)
            let outcome = worker == 0 ? first.hold(held, backend: backend) : second.hold(held, backend: backend)
            offered[worker * 2 + backend].append(held)
            if !outcome.stored { dropped[worker * 2 + backend] += held.lines }
            if outcome.evictedLines > 0 { dropped[worker * 2 + outcome.evictedBackend] += outcome.evictedLines }
            #expect(budget.bytesReserved <= budget.totalBytes)
            #expect(first.bytesInUse + second.bytesInUse == budget.bytesReserved)
        }
        #expect(budget.bytesReserved > budget.totalBytes - 4 * budget.chunkBytes, "the budget was used, not left idle")
        for index in 0..<4 {
            let lines = offered[index].reduce(0) { $0 + $1.lines }
            let store = index < 2 ? first.heldLines(of: index % 2) : second.heldLines(of: index % 2)
            #expect(store + dropped[index] == lines, "every line is held or counted as dropped (queue \(index))")
            #expect(dropped[index] > 0)
        }
        // What is left is the newest of each queue, in order: the oldest were the ones dropped.
        for index in 0..<4 {
            let replayed = index < 2 ? first.replayAll(backend: index % 2) : second.replayAll(backend: index % 2)
            #expect(!replayed.isEmpty)
            #expect(Array(offered[index].suffix(replayed.count)) == replayed)
        }
        #expect(budget.bytesReserved == 0)
    }

    @Test("a full budget rolls: each new packet replaces the oldest, also for packets spanning several chunks",
          arguments: [100, 1_400, 4_088, 5_000, 9_000])
    func rollingWindow(size: Int) {
        let budget = unpacedBudget(total: 16 << 10)  // 4 chunks of 4 KiB
        var store = HoldStore(backendCount: 1, budget: budget, packetBytes: largePackets)
        var offered: [Held] = []
        var dropped = 0
        for sequence in 0..<200 {
            let held = packet(backend: 0, sequence: sequence, size: size)
            let outcome = store.hold(held, backend: 0)
            offered.append(held)
            #expect(outcome.stored, "a packet that fits the budget is always stored (\(sequence))")
            #expect(outcome.evictedBackend == (outcome.evictedLines > 0 ? 0 : -1))
            dropped += outcome.evictedLines
            #expect(budget.bytesReserved <= budget.totalBytes)
        }
        let lines = offered.reduce(0) { $0 + $1.lines }
        #expect(store.heldLines + dropped == lines)
        let replayed = store.replayAll(backend: 0)
        #expect(!replayed.isEmpty && Array(offered.suffix(replayed.count)) == replayed)
        // The budget is used: less than one packet and a chunk of it is left free.
        #expect(replayed.reduce(0) { $0 + $1.bytes.count + 16 } + size + 2 * budget.chunkBytes >= budget.totalBytes)
        #expect(budget.bytesReserved == 0)
    }

    @Test("a backend that just failed takes room from the longest-held one in the same worker, not from nothing")
    func newOutageNotStarved() {
        let budget = unpacedBudget(total: 64 << 10)  // 16 chunks of 4 KiB
        var store = HoldStore(backendCount: 2, budget: budget, packetBytes: largePackets)
        var sequence = 0
        while budget.bytesReserved < budget.totalBytes {
            let outcome = store.hold(packet(backend: 0, sequence: sequence, size: 1_000), backend: 0)
            #expect(outcome.stored)
            sequence += 1
        }
        let linesBefore = store.heldLines(of: 0)
        let fresh = packet(backend: 1, sequence: 0, size: 1_000)
        let outcome = store.hold(fresh, backend: 1)
        #expect(outcome.stored && outcome.evictedBackend == 0 && outcome.evictedLines > 0)
        #expect(store.heldLines(of: 0) == linesBefore - outcome.evictedLines)
        #expect(store.replayAll(backend: 1) == [fresh])
        #expect(budget.bytesReserved <= budget.totalBytes)
    }

    @Test("a worker whose share the other workers hold drops its own packet and says so")
    func exhaustedByOthers() {
        let budget = unpacedBudget(total: 16 << 10, workers: 2)  // 4 chunks of 4 KiB
        var hog = HoldStore(backendCount: 1, budget: budget, packetBytes: largePackets)
        var other = HoldStore(backendCount: 1, budget: budget, packetBytes: largePackets)
        for sequence in 0..<40 { _ = hog.hold(packet(backend: 0, sequence: sequence, size: 1_000), backend: 0) }
        let held = packet(backend: 0, sequence: 99, size: 500)
        #expect(other.hold(held, backend: 0) == .init(stored: false, evictedBackend: -1, evictedLines: 0))
        #expect(!other.isHolding(0) && other.bytesInUse == 0)
        _ = hog.discard(backend: 0)
        let retried = other.hold(held, backend: 0)
        #expect(retried.stored, "room returned by one worker is usable by another")
    }

    @Test("a worker above its fair share gives chunks back, its oldest packets first, to one that claims them")
    func fairShareGiveBack() {
        let budget = unpacedBudget(total: 64 << 10, workers: 2)  // 16 chunks of 4 KiB, 8 each
        var hog = HoldStore(backendCount: 1, budget: budget, packetBytes: largePackets)
        var late = HoldStore(backendCount: 1, budget: budget, packetBytes: largePackets)
        var hogOffered: [Held] = [], lateOffered: [Held] = []
        var hogDropped = 0, lateDropped = 0
        func account(_ outcome: HoldStore.Outcome, _ held: Held, own: inout Int) {
            if !outcome.stored { own += held.lines }
            own += outcome.evictedLines  // each store only ever evicts its own queue here
        }
        for sequence in 0..<100 {
            let held = packet(backend: 0, sequence: sequence, size: 1_000)
            hogOffered.append(held)
            account(hog.hold(held, backend: 0), held, own: &hogDropped)
        }
        #expect(hog.bytesInUse == budget.totalBytes)
        let first = packet(backend: 0, sequence: 1_000, size: 1_000)
        lateOffered.append(first)
        let refused = late.hold(first, backend: 0)
        account(refused, first, own: &lateDropped)
        #expect(!refused.stored && budget.pendingClaims == 1, "refused, and the claim is filed")
        // Both keep holding, the hog three times as much; it gives back what the late worker claims,
        // and does not take it again, until both hold their share.
        for sequence in 0..<200 {
            for turn in 0..<3 {
                let forHog = packet(backend: 0, sequence: 100 + 3 * sequence + turn, size: 1_000)
                hogOffered.append(forHog)
                account(hog.hold(forHog, backend: 0), forHog, own: &hogDropped)
            }
            let forLate = packet(backend: 0, sequence: 1_001 + sequence, size: 1_000)
            lateOffered.append(forLate)
            account(late.hold(forLate, backend: 0), forLate, own: &lateDropped)
            #expect(budget.bytesReserved <= budget.totalBytes)
        }
        let share = budget.fairShareChunks * budget.chunkBytes
        #expect(abs(hog.bytesInUse - share) <= budget.chunkBytes && abs(late.bytesInUse - share) <= budget.chunkBytes,
                "\(hog.bytesInUse) and \(late.bytesInUse) bytes against a share of \(share)")
        #expect(hog.heldLines + hogDropped == hogOffered.reduce(0) { $0 + $1.lines })
        #expect(late.heldLines + lateDropped == lateOffered.reduce(0) { $0 + $1.lines })
        let hogKept = hog.replayAll(backend: 0)
        let lateKept = late.replayAll(backend: 0)
        #expect(Array(hogOffered.suffix(hogKept.count)) == hogKept)
        #expect(Array(lateOffered.suffix(lateKept.count)) == lateKept)
    }

    @Test("giving a chunk back never drops the packet just stored: another backend's oldest go")
    func giveBackSparesNewPacket() {
        let budget = unpacedBudget(total: 64 << 10, workers: 2)  // 16 chunks of 4 KiB, 8 each
        var hog = HoldStore(backendCount: 16, budget: budget, packetBytes: largePackets)
        var late = HoldStore(backendCount: 1, budget: budget, packetBytes: largePackets)
        for backend in 0..<16 { _ = hog.hold(packet(backend: backend, sequence: 0, size: 1_000), backend: backend) }
        #expect(hog.bytesInUse == budget.totalBytes)
        let refused = late.hold(packet(backend: 0, sequence: 0, size: 1_000), backend: 0)
        #expect(!refused.stored && budget.pendingClaims == 1)
        let fresh = packet(backend: 3, sequence: 1, size: 1_000)
        let outcome = hog.hold(fresh, backend: 3)
        #expect(outcome.stored && outcome.evictedBackend >= 0 && outcome.evictedBackend != 3)
        #expect(outcome.evictedLines == packet(backend: outcome.evictedBackend, sequence: 0, size: 1_000).lines)
        #expect(hog.replayAll(backend: 3) == [packet(backend: 3, sequence: 0, size: 1_000), fresh])
        let retried = late.hold(packet(backend: 0, sequence: 1, size: 1_000), backend: 0)
        #expect(retried.stored, "the chunk given back went to the claimant")
    }

    @Test("repayClaim: a store that holds nothing new gives its oldest chunk to a claimant, one per claim, never below its share")
    func repayWithoutHolding() {
        let budget = unpacedBudget(total: 64 << 10, workers: 2)  // 16 chunks of 4 KiB, 8 each
        var hog = HoldStore(backendCount: 2, budget: budget, packetBytes: largePackets)
        var late = HoldStore(backendCount: 1, budget: budget, packetBytes: largePackets)
        var offered: [[Held]] = [[], []]
        for sequence in 0..<64 {
            let backend = sequence < 16 ? 1 : 0  // backend 1's packets are the oldest, backend 0's queue the longest
            offered[backend].append(packet(backend: backend, sequence: sequence, size: 1_000))
            #expect(hog.hold(offered[backend].last!, backend: backend).stored)
        }
        #expect(hog.bytesInUse == budget.totalBytes)
        #expect(hog.repayClaim() == nil, "nothing is claimed")
        #expect(!late.hold(packet(backend: 0, sequence: 0, size: 1_000), backend: 0).stored && budget.pendingClaims == 1)
        // The hog's client went quiet: only its turns call repayClaim.
        let repaid = hog.repayClaim()
        #expect(repaid?.backend == 0, "the largest queue gives")
        #expect(hog.bytesInUse == budget.totalBytes - budget.chunkBytes && budget.pendingClaims == 0)
        #expect(hog.repayClaim() == nil, "one chunk per claim")
        #expect(late.hold(packet(backend: 0, sequence: 1, size: 1_000), backend: 0).stored, "the chunk went to the claimant")
        #expect(budget.bytesReserved == budget.totalBytes)
        let kept = hog.replayAll(backend: 0)
        let dropped = offered[0].prefix(offered[0].count - kept.count)
        #expect(kept == Array(offered[0].suffix(kept.count)), "its oldest went; the rest kept, in order")
        #expect(repaid?.lines == dropped.reduce(0) { $0 + $1.lines }, "the lines dropped are counted")
        #expect(hog.replayAll(backend: 1) == offered[1])
        // At its share or below, a store gives nothing back, claimed or not.
        budget.claim()
        #expect(late.repayClaim() == nil && budget.pendingClaims == 1)
    }

    @Test("a packet larger than the whole budget is refused with its own lines, nothing else lost", arguments: [0, 4_096])
    func neverFits(total: Int) {
        let budget = unpacedBudget(total: total)
        var store = HoldStore(backendCount: 1, budget: budget, packetBytes: largePackets)
        if total > 0 {
            let outcome = store.hold(packet(backend: 0, sequence: 1, size: 100), backend: 0)
            #expect(outcome.stored)
        }
        let huge = packet(backend: 0, sequence: 2, size: total + 1)
        #expect(store.hold(huge, backend: 0) == .init(stored: false, evictedBackend: -1, evictedLines: 0))
        #expect(store.heldPackets == (total > 0 ? 1 : 0))
        #expect(budget.bytesReserved <= total)
    }

    @Test("memory goes back to the budget as the queue drains, on discard, and when a store is destroyed")
    func memoryReturns() {
        let budget = unpacedBudget(total: 1 << 20)
        do {
            var store = HoldStore(backendCount: 2, budget: budget, packetBytes: largePackets)
            for sequence in 0..<200 { _ = store.hold(packet(backend: 0, sequence: sequence, size: 1_400), backend: 0) }
            let full = budget.bytesReserved
            #expect(full >= 200 * 1_400 && full == store.bytesInUse)
            var now: UInt64 = 1_000_000_000
            var previous = full
            for _ in 0..<200 {
                now += 1_000_000_000
                _ = store.replayOne(backend: 0, now: now)
                #expect(budget.bytesReserved <= previous)
                previous = budget.bytesReserved
                #expect(
                    budget.bytesReserved - store.heldBytes(of: 0) <= 2 * budget.chunkBytes + 16 * store.heldPackets(of: 0),
                    "drained chunks are returned at once")
            }
            #expect(budget.bytesReserved == 0)
            for sequence in 0..<50 { _ = store.hold(packet(backend: 1, sequence: sequence, size: 900), backend: 1) }
            #expect(budget.bytesReserved > 0)
            _ = store.discard(backend: 1)
            #expect(budget.bytesReserved == 0)
            for sequence in 0..<50 { _ = store.hold(packet(backend: 1, sequence: sequence, size: 900), backend: 1) }
            #expect(budget.bytesReserved > 0)
        }
        #expect(budget.bytesReserved == 0, "a destroyed store returns its chunks")
    }

    @Test("discard and remap account for every line; moved queues keep their packets under the new index",
          arguments: [
            ([1, nil, 0] as [Int?], 2), ([nil, nil, nil], 0), ([2, 0, 1], 4), ([0, 1, 2], 3), ([nil, 0, nil], 1),
          ])
    func remapAccounts(newIndex: [Int?], newCount: Int) {
        let budget = unpacedBudget(total: 1 << 20)
        var store = HoldStore(backendCount: 3, budget: budget, packetBytes: largePackets)
        var expected: [[Held]] = [[], [], []]
        for sequence in 0..<90 {
            let backend = sequence % 3
            let held = packet(backend: backend, sequence: sequence, size: 200 + 97 * sequence % 2_500)
            _ = store.hold(held, backend: backend)
            expected[backend].append(held)
        }
        let removedLines = newIndex.indices.filter { newIndex[$0] == nil }.reduce(0) { total, old in
            total + expected[old].reduce(0) { $0 + $1.lines }
        }
        #expect(store.remap(newIndex, newCount: newCount) == removedLines)
        #expect(store.backendCount == newCount)
        for old in newIndex.indices {
            guard let new = newIndex[old] else { continue }
            #expect(store.replayAll(backend: new) == expected[old])
        }
        #expect(store.heldLines == 0)
        #expect(budget.bytesReserved == 0)
        for backend in 0..<newCount {
            let outcome = store.hold(packet(backend: backend, sequence: 0, size: 10), backend: backend)
            #expect(outcome.stored)
            #expect(store.discard(backend: backend) == packet(backend: backend, sequence: 0, size: 10).lines)
        }
        #expect(budget.bytesReserved == 0)
    }

    /// Rates (relay-wide) and worker counts; the packet size stays within the burst.
    @Test("replay hands out no more than rate × elapsed + burst bytes, and no less than rate × elapsed − a packet",
          arguments: [(1 << 20, 1, 1_400), (1 << 20, 4, 1_400), (64 << 10, 1, 512), (10 << 20, 2, 8_000)])
    func pacingBound(rate: Int, workers: Int, size: Int) throws {
        let budget = HoldBudget(totalBytes: 64 << 20, replayBytesPerSecond: rate, workers: workers)
        var store = HoldStore(backendCount: 2, budget: budget, packetBytes: 1_400)
        let perWorker = rate / workers
        #expect(store.replayBytesPerSecond == perWorker && store.burstBytes == HoldStore.burstPackets * 1_400)
        // Held for long enough that the bucket is full when the backend comes back.
        let packetSize = min(size, store.burstBytes)
        let count = 3 * perWorker / packetSize + 20  // more than three seconds' worth
        for sequence in 0..<count { _ = store.hold(packet(backend: 1, sequence: sequence, size: packetSize), backend: 1) }
        let start: UInt64 = 5_000_000_000
        var now = start
        var sent = 0
        var step: UInt64 = 12_345
        while now - start < 3_000_000_000 {
            while let held = store.replayOne(backend: 1, now: now) { sent += held.bytes.count }
            let elapsed = Double(now - start) / 1e9
            let earned = Double(perWorker) * elapsed + Double(store.burstBytes)
            #expect(Double(sent) <= earned + 1, "at \(now - start) ns")
            // A worker that wakes when told loses no credit: all but the next packet's worth went out.
            #expect(Double(sent) >= earned - Double(packetSize) - 1, "at \(now - start) ns")
            // Irregular loop turns (other traffic), 12 µs to ~40 ms apart, never later than the replay asks.
            step = (step &* 1_103_515_245 &+ 12_345) % 40_000_000 + 12_000
            let nextTime = store.nextReplayTime(now: now, isReplaying: { $0 == 1 })
            let wake = try #require(nextTime)
            #expect(wake > now)
            now = min(now + step, wake)
        }
        let holding = store.isHolding(1)
        #expect(holding, "still more held than three seconds allow")
    }

    @Test("nextReplayTime is when the next packet may go: nothing before it, the packet at it")
    func nextReplayTime() throws {
        let budget = HoldBudget(totalBytes: 64 << 20, replayBytesPerSecond: 100_000, workers: 1)
        var store = HoldStore(backendCount: 3, budget: budget, packetBytes: 1_000)
        #expect(store.nextReplayTime(now: 1, isReplaying: { _ in true }) == nil, "nothing held")
        for sequence in 0..<40 { _ = store.hold(packet(backend: 2, sequence: sequence, size: 1_000 - sequence), backend: 2) }
        var now: UInt64 = 10_000_000_000
        #expect(store.nextReplayTime(now: now, isReplaying: { $0 != 2 }) == nil, "a backend still down is not waited for")
        #expect(store.nextReplayTime(now: now, isReplaying: { _ in true }) == now, "the burst may go at once")
        var burst = 0
        while store.replayOne(backend: 2, now: now) != nil { burst += 1 }
        #expect(burst == 4)
        for _ in 0..<10 {
            let nextTime = store.nextReplayTime(now: now, isReplaying: { _ in true })
            let next = try #require(nextTime)
            #expect(next > now)
            #expect(store.replayableLength(of: 2, now: next - 1) == nil)
            #expect(store.replayOne(backend: 2, now: next - 1) == nil)
            let replayable = store.replayableLength(of: 2, now: next)
            let length = try #require(replayable)
            let replayed = store.replayOne(backend: 2, now: next)
            let held = try #require(replayed)
            #expect(held.bytes.count == length)
            // At 100 kB/s a packet of ~1000 bytes costs ~10 ms of credit.
            #expect(next - now >= 9_000_000 && next - now <= 10_000_000)
            now = next
        }
    }

    @Test("a packet larger than the burst still goes when the bucket is full, and the debt delays the next")
    func oversizedPacket() throws {
        let budget = HoldBudget(totalBytes: 64 << 20, replayBytesPerSecond: 100_000, workers: 1)
        var store = HoldStore(backendCount: 1, budget: budget, packetBytes: 100)  // burst 400 bytes
        _ = store.hold(packet(backend: 0, sequence: 0, size: 2_000), backend: 0)
        _ = store.hold(packet(backend: 0, sequence: 1, size: 100), backend: 0)
        let now: UInt64 = 1_000_000_000
        #expect(store.replayOne(backend: 0, now: now)?.bytes.count == 2_000)
        let nextTime = store.nextReplayTime(now: now, isReplaying: { _ in true })
        let next = try #require(nextTime)
        // 1 600 bytes of debt and 100 bytes of cost at 100 kB/s: 17 ms.
        #expect(next - now == 17_000_000)
        #expect(store.replayOne(backend: 0, now: next)?.bytes.count == 100)
    }

    @Test("a drained hold gives its memory back to the system: every chunk it replayed from is unmapped, none kept by malloc or the store")
    func drainedMemoryLeavesTheProcess() throws {
        // Not the process's RSS: other suites run in this process at the same time and move it
        // by megabytes. Instead, each piece a replay hands out lies in a chunk; once the store
        // has drained, every such address must be unmapped (a write(2) from it fails with
        // EFAULT) or, if the kernel has since mapped it for someone else, hold other bytes.
        // Memory kept by the store or by malloc would still hold the packet there.
        let budget = unpacedBudget(total: 96 << 20)
        var store = HoldStore(backendCount: 1, budget: budget, packetBytes: largePackets)
        let held = packet(backend: 0, sequence: 0, size: 1_400)
        var count = 0
        while store.bytesInUse < 64 << 20 {
            _ = store.hold(held, backend: 0)
            count += 1
        }
        #expect(store.bytesInUse >= 64 << 20)
        // Where each replayed piece lay, and its first bytes.
        var pieces: [(address: UInt, bytes: [UInt8])] = []
        pieces.reserveCapacity(2 * count)
        var now: UInt64 = 1_000_000_000
        for _ in 0..<count {
            now += 1_000_000_000
            _ = store.replayNext(backend: 0, now: now) { piece in
                piece.withUnsafeBytes { raw in
                    guard let base = raw.baseAddress, raw.count >= 8 else { return }
                    pieces.append((UInt(bitPattern: base), Array(raw.prefix(8))))
                }
            }
        }
        #expect(store.bytesInUse == 0)
        #expect(pieces.count >= count, "\(pieces.count) pieces for \(count) packets")
        var ends: [Int32] = [0, 0]
        try #require(pipe(&ends) == 0)
        defer { close(ends[0]); close(ends[1]) }
        var stillHeld = 0
        var unmapped = 0
        var probe = [UInt8](repeating: 0, count: 8)
        for piece in pieces {
            let written = write(ends[1], UnsafeRawPointer(bitPattern: piece.address), 8)
            if written < 0 {
                #expect(errno == EFAULT)
                unmapped += 1
                continue
            }
            _ = probe.withUnsafeMutableBytes { read(ends[0], $0.baseAddress, 8) }
            if probe == piece.bytes { stillHeld += 1 }
        }
        #expect(stillHeld == 0, "\(stillHeld) of \(pieces.count) replayed pieces are still mapped with their packet's bytes")
        #expect(unmapped > 0, "no replayed piece's memory was unmapped")
    }
}
