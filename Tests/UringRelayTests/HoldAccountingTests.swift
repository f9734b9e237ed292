import RelayKernel
import Testing
@testable import UringRelay

/// Workers (cores) sharing one routing state and one hold budget, policy `hold`, backend 0
/// down: what a relay with `--on-backend-down hold --hold-bytes B` runs.
private struct HoldingWorkers: ~Copyable {
    let routing: RoutingState
    let addresses: [SocketAddress]
    let workers: Int
    let budget: HoldBudget
    // Cores are non-copyable: no array of them; a relay here has one or two workers.
    var first: RelayCore
    var second: RelayCore?
    var now: UInt64 = 1_000_000_000
    /// Lines each backend was sent, by every worker (replayed ones included).
    var sentLines = [0, 0]
    /// The lines each backend was sent, in the order they were handed out (a pool change's
    /// flush aside).
    var sentText: [[Substring]] = [[], []]

    init(holdBytes: Int, workers: Int, replayBytesPerSecond: Int = 1 << 30) throws {
        precondition((1...2).contains(workers))
        let backends = try ["127.0.0.1:9001", "127.0.0.1:9002"].map { try BackendAddress(parsing: $0) }
        let addresses = backends.map { SocketAddress(numericHost: $0.host, port: $0.port)! }
        var configuration = RelayConfiguration(backends: backends)
        configuration.packetBytes = 200
        configuration.onBackendDown = .hold
        configuration.holdBytes = holdBytes
        configuration.threads = workers
        try configuration.validate()
        let routing = RoutingState(pool: BackendPool(backends: backends, addresses: addresses, policy: .hold))
        // By default a replay rate that never makes the test wait: pacing is HoldStoreTests' subject.
        let budget = HoldBudget(totalBytes: holdBytes, replayBytesPerSecond: replayBytesPerSecond, workers: workers)
        func settings() -> WorkerSettings {
            WorkerSettings(
                configuration: configuration, listeners: [SocketAddress(numericHost: "127.0.0.1", port: 0)!], routing: routing,
                holdBudget: budget)
        }
        let firstCore = try RelayCore(settings: settings(), now: 0)
        var secondCore: RelayCore? = nil
        if workers == 2 { secondCore = try RelayCore(settings: settings(), now: 0) }
        first = firstCore
        second = secondCore
        self.routing = routing
        self.addresses = addresses
        self.workers = workers
        self.budget = budget
        routing.publish(down: [true, false], addresses: addresses)
    }

    /// One loop turn of worker `index`: a datagram in, the turn's bookkeeping (`advance` later
    /// than the last, by default a second, so every batch is due and the replay pace allows its
    /// burst), every outgoing packet sent at once.
    mutating func turn(_ index: Int, datagram: [UInt8]? = nil, advance: UInt64 = 1_000_000_000) {
        now += advance
        if index == 0 {
            Self.turn(&first, now: now, datagram: datagram, sentLines: &sentLines, sentText: &sentText)
        } else if var core = second.take() {
            Self.turn(&core, now: now, datagram: datagram, sentLines: &sentLines, sentText: &sentText)
            second = consume core
        }
    }

    private static func turn(
        _ core: inout RelayCore, now: UInt64, datagram: [UInt8]?, sentLines: inout [Int], sentText: inout [[Substring]]
    ) {
        core.beginTurn(now: now)
        if core.hasPendingPool {
            // A pool change (a reload of the policy): the old pool's batches go first, as a driver sends them.
            while let (slot, backend) = core.nextOutgoing() {
                sentLines[backend] += core.sendCompleted(slot: slot, result: Int32(core.sendBuffers.length(of: slot))).lines
            }
            let ready = core.poolChangeReady(sendsInFlight: 0)
            #expect(ready)
            do { try core.completePoolChange(now: now) } catch { Issue.record("pool change: \(error)") }
        }
        if let datagram {
            let accepting = core.canAcceptDatagram
            #expect(accepting)
            core.receive(.datagram(length: datagram.count), datagram.span.bytes, listener: 0, now: now)
        }
        _ = core.endTurn(now: now, moreToReceive: false)
        while let (slot, backend) = core.nextOutgoing() {
            let packet = core.sendBuffers.withBytes(ofSlot: slot) { String(decoding: Array(copying: $0), as: UTF8.self) }
            if backend < sentText.count { sentText[backend] += packet.split(separator: "\n") }
            let outcome = core.sendCompleted(slot: slot, result: Int32(core.sendBuffers.length(of: slot)))
            sentLines[backend] += outcome.lines
        }
    }

    /// Each worker's counters once it has stopped, in worker order.
    mutating func finishEach() -> [RelayCounters] {
        var each = [first.finish(unrelayedDatagrams: 0, sendsInFlight: 0, now: 0)]
        if var core = second.take() {
            each.append(core.finish(unrelayedDatagrams: 0, sendsInFlight: 0, now: 0))
            second = consume core
        }
        return each
    }

    /// Every worker's counters once each has stopped.
    mutating func finish() -> RelayCounters {
        var total = RelayCounters(backends: routing.current.identities)
        total += first.finish(unrelayedDatagrams: 0, sendsInFlight: 0, now: 0)
        if var core = second.take() {
            total += core.finish(unrelayedDatagrams: 0, sendsInFlight: 0, now: 0)
            second = consume core
        }
        return total
    }
}

/// `count` datagrams of five lines with distinct names, and how many of their lines the Go
/// StatsRelay's routing sends to each of two backends.
private func traffic(_ count: Int) -> (datagrams: [[UInt8]], linesPerBackend: [Int]) {
    let router = Router(backendCount: 2)
    var perBackend = [0, 0]
    let datagrams = (0..<count).map { index in
        let lines = (0..<5).map { "hold.\(index).\($0):\(index)|c" }
        for line in lines { perBackend[router.backend(forName: String(line.prefix { $0 != ":" }))] += 1 }
        return Array(lines.joined(separator: "\n").utf8)
    }
    return (datagrams, perBackend)
}

@Suite("Hold accounting: every held line ends once, as replayed, hold_overflow, held_at_exit or backend_removed")
struct HoldAccountingTests {
    /// `--hold-bytes` 0 holds nothing (every held line overflows at once), 4 KiB holds one chunk
    /// (overflow evicts), 64 MiB (the default) holds everything sent here; with one worker and
    /// with two sharing the budget (claims and chunks given back); a backend that stays down to
    /// the end, and one that comes back part way through its replay.
    @Test("held = replayed + hold_overflow + held_at_exit, and held is every line routed to the down backend",
          arguments: [0, 4_096, 64 << 20], [1, 2])
    func identity(holdBytes: Int, workers: Int) throws {
        var relay = try HoldingWorkers(holdBytes: holdBytes, workers: workers)
        let (datagrams, linesPerBackend) = traffic(400)
        for (index, datagram) in datagrams.enumerated() { relay.turn(index % workers, datagram: datagram) }
        for index in 0..<workers { relay.turn(index) }
        #expect(relay.sentLines == [0, linesPerBackend[1]], "backend 1 got its lines at once; backend 0 got none while down")

        // Backend 0 comes back: a few turns replay part of what is held, the rest is left at exit.
        relay.routing.publish(down: [false, false], addresses: relay.addresses)
        for _ in 0..<3 {
            for index in 0..<workers { relay.turn(index) }
        }
        let counters = relay.finish()

        let held = counters[.linesHeld]
        let replayed = counters[.linesReplayed]
        let overflow = counters[.linesDroppedHoldOverflow]
        let atExit = counters[.linesDroppedHeldAtExit]
        #expect(held == UInt64(linesPerBackend[0]), "every line for the down backend was held")
        #expect(held == replayed + overflow + atExit + counters[.linesDroppedBackendRemoved])
        #expect(replayed == UInt64(relay.sentLines[0]), "what was replayed reached backend 0")
        for backend in 0..<2 {
            #expect(counters[.linesHeld, backend: backend] == counters[.linesReplayed, backend: backend]
                + counters[.linesDroppedHoldOverflow, backend: backend]
                + (backend == 0 ? atExit : 0))
        }
        switch holdBytes {
        case 0:
            #expect(overflow == held && replayed == 0 && atExit == 0, "--hold-bytes 0 holds nothing")
        case 4_096:
            #expect(overflow > 0 && overflow < held, "one chunk holds some, the rest overflows")
        default:
            #expect(overflow == 0 && replayed > 0 && atExit > 0, "all held; part replayed, the rest left at exit")
        }
    }

    /// Worker 0 fills the whole budget for the down backend, then its client goes quiet; worker
    /// 1's client starts sending. Worker 0 never holds another packet, so only its turns (an idle
    /// worker's heartbeat) can give back what worker 1 claims.
    @Test("a worker that stopped holding gives back the chunks another claims, at its turns: the oldest packets of the relay go first, not the newcomer's")
    func quietWorkerRepaysClaims() throws {
        var relay = try HoldingWorkers(holdBytes: 16 << 10, workers: 2)  // 4 chunks of 4 KiB, 2 each
        let (datagrams, linesPerBackend) = traffic(1_200)
        let early = datagrams.prefix(800), late = datagrams.dropFirst(800)
        for datagram in early { relay.turn(0, datagram: datagram) }
        #expect(relay.budget.bytesReserved == relay.budget.totalBytes, "worker 0 holds the whole budget")
        for datagram in late {
            relay.turn(1, datagram: datagram)
            relay.turn(0)  // idle: nothing received, nothing to hold
            #expect(relay.budget.bytesReserved <= relay.budget.totalBytes)
        }
        let each = relay.finishEach()
        let kept = each.map { $0[.linesDroppedHeldAtExit] }
        let share = UInt64(relay.budget.fairShareChunks)
        // Each ends with its share of chunks; what fills a chunk differs by a packet or two.
        #expect(kept[1] > 0, "worker 1 kept nothing: worker 0 never gave its chunks back")
        #expect(kept[1] * 2 >= kept[0] && kept[0] * 2 >= kept[1], "kept per worker: \(kept), \(share) chunks each")
        #expect(each[0][.linesDroppedHoldOverflow] > 0, "worker 0's oldest packets made the room")
        for counters in each {
            #expect(counters[.linesHeld] == counters[.linesDroppedHoldOverflow] + counters[.linesDroppedHeldAtExit])
        }
        #expect(each.reduce(0) { $0 + $1[.linesHeld] } == UInt64(linesPerBackend[0]))
    }

    /// A reload from `hold` to `rehash` or `drop` while backend 0 is down and lines are held
    /// for it: the new policy applies at once to new lines, and what was held drains as under
    /// `hold` once backend 0 is back (the lines for it meanwhile queued behind the replay).
    @Test("leaving hold with lines held: new lines follow the new policy, the held ones replay when the backend is back; each line counted once",
          arguments: [DownPolicy.rehash, .drop], [1, 2])
    func leavingHoldDrains(policy: DownPolicy, workers: Int) throws {
        var relay = try HoldingWorkers(holdBytes: 64 << 20, workers: workers)
        let (datagrams, _) = traffic(900)
        let phases = [Array(datagrams[0..<300]), Array(datagrams[300..<600]), Array(datagrams[600...])]
        let toDown = phases.map { phase in
            phase.reduce(0) { count, datagram in
                count + String(decoding: datagram, as: UTF8.self).split(separator: "\n").filter {
                    Router(backendCount: 2).backend(forName: String($0.prefix { $0 != ":" })) == 0
                }.count
            }
        }
        for (index, datagram) in phases[0].enumerated() { relay.turn(index % workers, datagram: datagram) }
        #expect(relay.sentLines[0] == 0)

        // The reload: one pool change, the backends and their health kept.
        relay.routing.replaceBackends(relay.routing.current.backends, addresses: relay.addresses, policy: policy)
        for (index, datagram) in phases[1].enumerated() { relay.turn(index % workers, datagram: datagram) }
        #expect(relay.sentLines[0] == 0, "nothing replays to a backend still down")

        relay.routing.publish(down: [false, false], addresses: relay.addresses)
        for (index, datagram) in phases[2].enumerated() { relay.turn(index % workers, datagram: datagram) }
        for _ in 0..<20 {
            for index in 0..<workers { relay.turn(index) }
        }
        let counters = relay.finish()
        #expect(counters[.linesReplayed] == counters[.linesHeld], "everything held was replayed")
        #expect(counters[.linesDroppedHeldAtExit] == 0 && counters[.linesDroppedHoldOverflow] == 0)
        // Held: every line of the first phase for backend 0, and those of the third that queued behind the replay.
        #expect(counters[.linesHeld] >= UInt64(toDown[0]) && counters[.linesHeld] <= UInt64(toDown[0] + toDown[2]))
        #expect(relay.sentLines[0] == toDown[0] + toDown[2], "backend 0 got what was held, and its lines once it was back")
        switch policy {
        case .rehash:
            #expect(counters[.linesRehashed] == UInt64(toDown[1]))
            #expect(relay.sentLines[0] + relay.sentLines[1] == 900 * 5, "every line sent once")
        default:
            #expect(counters[.linesDroppedBackendDown] == UInt64(toDown[1]))
            #expect(relay.sentLines[0] + relay.sentLines[1] == 900 * 5 - toDown[1], "every line sent once, or dropped and counted")
        }
    }

    /// A reload from `hold` to `rehash` or `drop` while every backend is down: failing open,
    /// each backend counts as up, so what was held for it replays at once and the lines that
    /// come after it queue behind, never ahead (a gauge's older value would otherwise land last).
    @Test("leaving hold with every backend down: failing open, the held lines go first to each primary and a worker's newer ones after them; each line sent once, counted once",
          arguments: [DownPolicy.rehash, .drop], [1, 2])
    func leavingHoldAllDown(policy: DownPolicy, workers: Int) throws {
        var relay = try HoldingWorkers(holdBytes: 64 << 20, workers: workers)
        relay.routing.publish(down: [true, true], addresses: relay.addresses)
        let (datagrams, perBackend) = traffic(600)
        let router = Router(backendCount: 2)
        func byBackend(_ datagrams: ArraySlice<[UInt8]>) -> [[Substring]] {
            var lines: [[Substring]] = [[], []]
            for datagram in datagrams {
                for line in String(decoding: datagram, as: UTF8.self).split(separator: "\n") {
                    lines[router.backend(forName: String(line.prefix { $0 != ":" }))].append(line)
                }
            }
            return lines
        }
        let (held, after) = (byBackend(datagrams[0..<300]), byBackend(datagrams[300...]))
        for (index, datagram) in datagrams[0..<300].enumerated() { relay.turn(index % workers, datagram: datagram) }
        #expect(relay.sentLines == [0, 0], "everything held while every backend is down under hold")

        relay.routing.replaceBackends(relay.routing.current.backends, addresses: relay.addresses, policy: policy)
        for (index, datagram) in datagrams[300...].enumerated() { relay.turn(index % workers, datagram: datagram) }
        for _ in 0..<20 {
            for index in 0..<workers { relay.turn(index) }
        }
        let counters = relay.finish()
        for backend in 0..<2 {
            let sent = relay.sentText[backend]
            #expect(Set(sent).count == sent.count, "backend \(backend): a line sent twice")
            #expect(sent.sorted() == (held[backend] + after[backend]).sorted(), "backend \(backend): every line once")
            // One worker's lines keep their order; two workers' lines have none between them.
            if workers == 1 { #expect(sent == held[backend] + after[backend], "backend \(backend): held lines first, oldest first") }
        }
        #expect(counters[.linesHeld] >= UInt64(held[0].count + held[1].count))
        #expect(counters[.linesReplayed] == counters[.linesHeld], "everything held was replayed")
        #expect(counters[.linesDroppedHeldAtExit] == 0 && counters[.linesDroppedHoldOverflow] == 0)
        #expect(counters[.linesDroppedBackendDown] == 0 && counters[.linesRehashed] == 0)
        #expect(counters[.linesFailOpen] == UInt64(after[0].count + after[1].count))
        #expect(relay.sentLines[0] + relay.sentLines[1] == perBackend[0] + perBackend[1])
    }

    /// Failing open ends when one backend comes back while another still has held packets: a
    /// batch for the one still down, packed while failing open and handed out after, must queue
    /// behind what is held for it, not go first.
    @Test("a batch packed while failing open and handed out once failing open has ended goes behind the held lines of its backend, still down; each line once, in order")
    func failOpenEndsWithBatchOpen() throws {
        // A slow replay (about a 200-byte packet a second-long turn): held packets are left
        // when failing open ends.
        var relay = try HoldingWorkers(holdBytes: 64 << 20, workers: 1, replayBytesPerSecond: 200)
        relay.routing.publish(down: [true, true], addresses: relay.addresses)
        let (datagrams, perBackend) = traffic(33)
        for datagram in datagrams[0..<30] { relay.turn(0, datagram: datagram) }
        #expect(relay.sentLines == [0, 0])
        relay.routing.replaceBackends(relay.routing.current.backends, addresses: relay.addresses, policy: .rehash)
        for datagram in datagrams[30..<32] { relay.turn(0, datagram: datagram) }
        // Packed a microsecond later: its batches stay open (not due, not full).
        relay.turn(0, datagram: datagrams[32], advance: 1_000)
        let router = Router(backendCount: 2)
        var expected: [[Substring]] = [[], []]
        for datagram in datagrams {
            for line in String(decoding: datagram, as: UTF8.self).split(separator: "\n") {
                expected[router.backend(forName: String(line.prefix { $0 != ":" }))].append(line)
            }
        }
        let olderForOne = expected[1].count - String(decoding: datagrams[32], as: UTF8.self).split(separator: "\n")
            .filter { router.backend(forName: String($0.prefix { $0 != ":" })) == 1 }.count
        #expect(relay.sentLines[1] < olderForOne, "some of backend 1's older lines still held when failing open ends")
        relay.routing.publish(down: [false, true], addresses: relay.addresses)
        for _ in 0..<3 { relay.turn(0) }
        relay.routing.publish(down: [false, false], addresses: relay.addresses)
        for _ in 0..<200 { relay.turn(0) }
        let counters = relay.finish()
        #expect(relay.sentText[1] == expected[1], "backend 1: every line once, oldest first")
        #expect(relay.sentText[0].sorted() == expected[0].sorted(), "backend 0: every line once")
        #expect(relay.sentLines == perBackend)
        #expect(counters[.linesReplayed] == counters[.linesHeld])
        #expect(counters[.linesDroppedHeldAtExit] == 0 && counters[.linesDroppedHoldOverflow] == 0)
    }

    @Test("--hold-bytes 0 is accepted: it means hold nothing")
    func zeroIsValid() throws {
        var configuration = RelayConfiguration(backends: [try BackendAddress(parsing: "127.0.0.1:9001")])
        configuration.onBackendDown = .hold
        configuration.holdBytes = 0
        try configuration.validate()
    }
}
