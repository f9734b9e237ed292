import Foundation
import Glibc
@testable import RelayKernel
import RoutingReference
import Synchronization
import Testing
@testable import UringRelay

/// A thread sending datagrams of `linesPerDatagram` unique lines (`reload.<sequence>:1|c`), in
/// sequence order from one socket, paced to `linesPerSecond` (as far as the machine allows),
/// until `datagrams` are sent.
final class SequencedSender: Sendable {
    private final class Shared: Sendable {
        let sent = Atomic<Int>(0)
        let finishedAt = Atomic<UInt64>(0)
    }
    private let shared = Shared()
    private let thread: WorkerThreadHandle
    let linesPerDatagram: Int
    let startedAt: UInt64

    init(to address: SocketAddress, datagrams: Int, linesPerDatagram: Int, linesPerSecond: Int) throws {
        let socket = SocketBox(try UDPSocket.bound(to: SocketAddress(numericHost: "127.0.0.1", port: 0)!))
        self.linesPerDatagram = linesPerDatagram
        let interval = UInt64(1e9) * UInt64(linesPerDatagram) / UInt64(linesPerSecond)
        let start = MonotonicClock.nanoseconds()
        startedAt = start
        thread = WorkerThreadHandle(try WorkerThread(name: "test-sequenced", cpu: nil) { [shared] _ in
            for datagram in 0..<datagrams {
                // Pacing, not synchronisation: datagram i leaves no earlier than start + i × interval.
                let due = start + UInt64(datagram) * interval
                let now = MonotonicClock.nanoseconds()
                if due > now + 20_000 { usleep(UInt32((due - now) / 1_000)) }
                let first = datagram * linesPerDatagram
                let text = (first..<first + linesPerDatagram).map { "reload.\($0):1|c" }.joined(separator: "\n")
                try? socket.socket.send(Array(text.utf8), to: address)
                shared.sent.add(1, ordering: .releasing)
            }
            shared.finishedAt.store(MonotonicClock.nanoseconds(), ordering: .releasing)
        })
    }

    /// How many datagrams have been sent whole (the next one may be on its way).
    var sent: Int { shared.sent.load(ordering: .acquiring) }

    /// Waits (bounded) until `count` datagrams went out.
    func waitUntilSent(_ count: Int, seconds: Double = 20) -> Bool {
        let deadline = MonotonicClock.nanoseconds() + UInt64(seconds * 1e9)
        while sent < count {
            if MonotonicClock.nanoseconds() > deadline { return false }
            usleep(200)
        }
        return true
    }

    /// Waits for the thread; returns the seconds it spent sending.
    func join() -> Double {
        thread.join()
        return Double(shared.finishedAt.load(ordering: .acquiring) - startedAt) / 1e9
    }
}

/// `collect` on its own thread, so the backends' sockets are emptied while the traffic runs.
final class BackgroundCollector: Sendable {
    private final class Shared: Sendable {
        let result = Mutex<Received?>(nil)
    }
    private let shared = Shared()
    private let thread: WorkerThreadHandle

    init(from backends: [TestBackend], expectedLines: Int, seconds: Double) throws {
        thread = WorkerThreadHandle(try WorkerThread(name: "test-collector", cpu: nil) { [shared] _ in
            let received = (try? collect(from: backends, expectedLines: expectedLines, seconds: seconds)) ?? Received(datagrams: [])
            shared.result.withLock { $0 = received }
        })
    }

    /// Waits for the collection to end (all lines, or its time limit) and returns it.
    func finish() -> Received {
        thread.join()
        return shared.result.withLock { $0! }
    }
}

/// Issue 13 §2's zero-loss acceptance, on loopback: 20 reloads alternating two backend lists
/// that route a good share of names differently and two packet lengths, under steady traffic.
@Suite("Zero loss across reloads", .serialized, .timeLimit(.minutes(1)), .onOwnThread)
struct ReloadLossTests {
    /// What one line's arrival tells, and where it is allowed to be.
    struct Window {
        /// The first configuration (0 = the start, k = after reload k) that may have routed it:
        /// reloads that completed before its datagram was sent are in force for it.
        var earliest: Int
        /// The last one: reloads begun after the relay had counted its datagram as received
        /// cannot have routed it.
        var latest: Int
    }

    /// The configuration window of datagram `datagram`, from what was recorded around each
    /// reload k (1-based at index k-1): `readBefore`, the relay's received-datagram count just
    /// before the reload began (those datagrams were read, in order, under an earlier
    /// configuration), and `sentAfter`, the sender's count just after the reload returned
    /// (datagrams after the next one left once every worker had applied it). Datagrams from
    /// `tail` on were sent once every reload had returned.
    static func window(of datagram: Int, readBefore: [Int], sentAfter: [Int], tail: Int) -> Window {
        let earliest = datagram >= tail ? sentAfter.count : sentAfter.filter { datagram > $0 }.count
        let latest = (readBefore.firstIndex { datagram < $0 }) ?? readBefore.count
        return Window(earliest: earliest, latest: latest)
    }

    @Test("20 reloads alternating backends [A,B,C]/[C,D] and packet length 1400/512 under steady traffic: every line arrives exactly once and whole, at the backend of a configuration in force while it was in flight, configurations never going back, and no packet longer than the length in force", arguments: ioDrivers)
    func twentyReloads(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backends = try (0..<4).map { _ in try TestBackend() }
        let specs = backends.map(\.spec)
        let pools = [[specs[0], specs[1], specs[2]], [specs[2], specs[3]]]
        let packetLengths = [1400, 512]
        let reloads = 20
        // One worker reads the one sender's datagrams in order, so a received-datagram count is a
        // prefix of the sequence. A long flush interval keeps batches open across each reload.
        let relay = try InProcessRelay(backends: Array(backends[0..<3]), driver: driver) { configuration in
            configuration.flushIntervalNanoseconds = 1_000_000_000
            configuration.packetBytes = packetLengths[0]
            configuration.shutdownTimeoutNanoseconds = 15_000_000_000
        }
        #expect(relay.relay.driver == driver)
        // The reference routing differs between the two lists for a good share of names.
        let names = (0..<1_000).map { "reload.\($0)" }
        let differing = names.filter {
            pools[0][ReferenceRouting.primary($0, backends: 3)] != pools[1][ReferenceRouting.primary($0, backends: 2)]
        }.count
        #expect(differing > 500, "\(differing) of 1000 names change backend")

        let datagrams = 12_000
        let linesPerDatagram = 16
        // Datagrams sent after the last reload returned, so that it is seen in force.
        let tailDatagrams = 100
        let total = (datagrams + tailDatagrams) * linesPerDatagram
        let collector = try BackgroundCollector(from: backends, expectedLines: total, seconds: 30)
        let sender = try SequencedSender(to: relay.address, datagrams: datagrams, linesPerDatagram: linesPerDatagram, linesPerSecond: 80_000)
        var readBefore: [Int] = []
        var sentAfter: [Int] = []
        var reloadMilliseconds: [Double] = []
        for step in 1...reloads {
            // The reloads spread over the first four fifths of the traffic: the last fifth is
            // sent after the last reload completed, under its configuration alone.
            #expect(sender.waitUntilSent(datagrams * step * 4 / (reloads * 5)))
            var next = relay.relay.configurationInForce
            next.backends = try pools[step % 2].map { try BackendAddress(parsing: $0) }
            next.packetBytes = packetLengths[step % 2]
            readBefore.append(Int(relay.relay.liveCounters()[.datagramsReceived]))
            let began = MonotonicClock.nanoseconds()
            let plan = try relay.relay.reload(to: next)
            sentAfter.append(sender.sent)
            reloadMilliseconds.append(Double(MonotonicClock.nanoseconds() - began) / 1e6)
            #expect(plan.workersNotApplied == 0, "reload \(step)")
        }
        let seconds = sender.join()
        try send((datagrams..<datagrams + tailDatagrams).map { datagram in
            (datagram * linesPerDatagram..<(datagram + 1) * linesPerDatagram).map { "reload.\($0):1|c" }.joined(separator: "\n")
        }, to: relay.address)
        let received = collector.finish()
        let counters = relay.stop()
        print("reload loss (\(driver.rawValue)): \(datagrams * linesPerDatagram) lines in \(datagrams) datagrams over \(String(format: "%.2f", seconds)) s = \(Int(Double(datagrams * linesPerDatagram) / seconds)) lines/s offered, \(reloads) reloads taking \(reloadMilliseconds.map { String(format: "%.1f", $0) }.joined(separator: " ")) ms; read before / sent after each: \(zip(readBefore, sentAfter).map { "\($0)/\($1)" }.joined(separator: " ")); \(counters[.poolChanges]) pool changes")

        // Each line's backend, parsed strictly: anything else is a split or foreign line.
        var arrivals = Array(repeating: [Int](), count: total)
        var foreign: [String] = []
        for (backend, lines) in received.lines.enumerated() {
            for line in lines {
                if line.hasPrefix("reload."), line.hasSuffix(":1|c"), let sequence = Int(line.dropFirst(7).dropLast(4)), (0..<total).contains(sequence) {
                    arrivals[sequence].append(backend)
                } else {
                    foreign.append(line)
                }
            }
        }
        let lost = arrivals.indices.filter { arrivals[$0].isEmpty }
        let duplicated = arrivals.indices.filter { arrivals[$0].count > 1 }
        #expect(lost.isEmpty, "\(lost.count) lines lost, first \(lost.prefix(10))")
        #expect(duplicated.isEmpty, "\(duplicated.count) lines arrived twice, first \(duplicated.prefix(10))")
        #expect(foreign.isEmpty, "split or foreign lines: \(foreign.prefix(5))")

        // Configuration k is pools[k % 2] with packetLengths[k % 2]. The one worker applies the
        // reloads in order, so the configuration routing successive lines never goes back: take
        // for each line the earliest configuration in its window, at or after the previous
        // line's, that routes it to where it arrived.
        var current = 0
        var misrouted: [(sequence: Int, backend: String, window: Window)] = []
        var windows: [Window] = []
        windows.reserveCapacity(total)
        for sequence in 0..<total {
            let window = Self.window(of: sequence / linesPerDatagram, readBefore: readBefore, sentAfter: sentAfter, tail: datagrams)
            windows.append(window)
            guard let backend = arrivals[sequence].first else { continue }
            let name = "reload.\(sequence)"
            let from = max(current, window.earliest)
            let routedBy = from <= window.latest ? (from...window.latest).first { configuration in
                let pool = pools[configuration % 2]
                return pool[ReferenceRouting.primary(name, backends: pool.count)] == specs[backend]
            } : nil
            if let routedBy {
                current = routedBy
            } else {
                misrouted.append((sequence, specs[backend], window))
            }
        }
        #expect(misrouted.isEmpty, "\(misrouted.count) misrouted, first \(misrouted.prefix(5))")
        #expect(current == reloads, "the last configuration never took over")

        // A packet may be as long as the longest length in force at any time in its lines'
        // windows: the length of the one configuration where a line's window is one wide.
        var tooLong: [(backend: Int, bytes: Int, allowed: Int)] = []
        for (backend, packets) in received.datagrams.enumerated() {
            for packet in packets {
                var allowed = 0
                for line in packet.split(separator: "\n") {
                    guard let sequence = Int(line.dropFirst(7).prefix { $0 != ":" }), (0..<total).contains(sequence) else { continue }
                    let window = windows[sequence]
                    allowed = max(allowed, (window.earliest...window.latest).map { packetLengths[$0 % 2] }.max()!)
                }
                if packet.utf8.count > allowed { tooLong.append((backend, packet.utf8.count, allowed)) }
            }
        }
        #expect(tooLong.isEmpty, "\(tooLong.count) packets over the length in force, first \(tooLong.prefix(5))")
        #expect(received.datagrams.joined().contains { $0.utf8.count > 512 }, "packets of the 1400-byte configurations were filled past 512")

        #expect(relay.relay.reloads.succeeded == UInt64(reloads))
        #expect(counters[.linesForwarded] == UInt64(total), "\(counters.report())")
        // A reload that comes while the worker still sends the previous change's batches (it
        // takes no datagram meanwhile) replaces the pending pool: two changes merge into one, and
        // one back to the pool in force is none. So at most one change per reload.
        #expect((1...UInt64(reloads)).contains(counters[.poolChanges]), "\(counters[.poolChanges]) pool changes for \(reloads) reloads")
    }
}
