import Foundation
import Glibc
@testable import RelayKernel
import RoutingReference
import Synchronization
import Testing
@testable import UringRelay

/// A thread sending datagrams of unique lines (`pool.<index>:1|c`), in order, paced so the
/// relay's socket never overflows, until `datagrams` are sent.
final class NumberedSender: Sendable {
    private final class Shared: Sendable {
        let sent = Atomic<Int>(0)
        let released = Atomic<Bool>(false)
    }
    private let shared = Shared()
    private let thread: WorkerThreadHandle
    let linesPerDatagram: Int

    /// Starts sending `datagrams` datagrams of `linesPerDatagram` numbered lines.
    ///
    /// - Parameter holdBefore: a datagram the sender waits before (at most 20 s) until
    ///   `release()`: so that what follows is sent only after a change the test made (the
    ///   last pool of a series, applied), however slowly a loaded host applied it.
    init(to address: SocketAddress, datagrams: Int, linesPerDatagram: Int, pauseMicroseconds: UInt32, holdBefore: Int? = nil) throws {
        let socket = SocketBox(try UDPSocket.bound(to: SocketAddress(numericHost: "127.0.0.1", port: 0)!))
        self.linesPerDatagram = linesPerDatagram
        thread = WorkerThreadHandle(try WorkerThread(name: "test-numbered", cpu: nil) { [shared] _ in
            for datagram in 0..<datagrams {
                if datagram == holdBefore {
                    let deadline = MonotonicClock.nanoseconds() + 20_000_000_000
                    while !shared.released.load(ordering: .acquiring) && MonotonicClock.nanoseconds() < deadline { usleep(1_000) }
                }
                let first = datagram * linesPerDatagram
                let text = (first..<first + linesPerDatagram).map { "pool.\($0):1|c" }.joined(separator: "\n")
                try? socket.socket.send(Array(text.utf8), to: address)
                shared.sent.add(1, ordering: .releasing)
                // Pacing, not synchronisation: a load shape the socket buffer absorbs.
                usleep(pauseMicroseconds)
            }
        })
    }

    /// Waits (bounded) until `count` datagrams went out.
    func waitUntilSent(_ count: Int, seconds: Double = 20) -> Bool {
        let deadline = MonotonicClock.nanoseconds() + UInt64(seconds * 1e9)
        while shared.sent.load(ordering: .acquiring) < count {
            if MonotonicClock.nanoseconds() > deadline { return false }
            usleep(1_000)
        }
        return true
    }

    /// Lets a sender held at `holdBefore` go on.
    func release() { shared.released.store(true, ordering: .releasing) }

    func join() { thread.join() }
}

@Suite("Backend pool changes while relaying", .serialized, .timeLimit(.minutes(1)), .onOwnThread)
struct PoolChangeTests {
    /// The index (in `pools`) of the first pool at or after `from` that routes `name` to
    /// `backend`, or nil.
    static func firstPool(routing name: String, to backend: String, in pools: [[String]], from: Int) -> Int? {
        for index in from..<pools.count {
            let pool = pools[index]
            if pool[ReferenceRouting.primary(name, backends: pool.count)] == backend { return index }
        }
        return nil
    }

    /// Checks lines `pool.0` … `pool.<total-1>` received by the backends `specs` (`lines[b]` what
    /// backend `b` got): each arrived exactly once, and, as one worker relays in order so the pools
    /// in force never go back, each at its route under the pool of the line before it or of a
    /// later pool, the last pool taking over in the end. A line routed by anything else (a refused
    /// file's pool, a stale one) counts as misrouted.
    static func expectArrivedOnceInPoolOrder(
        _ lines: [[String]], specs: [String], pools: [[String]], total: Int,
        sourceLocation: SourceLocation = #_sourceLocation
    ) {
        var arrivals: [Int: [String]] = [:]
        for (backend, received) in lines.enumerated() {
            for line in received {
                let index = Int(line.dropFirst("pool.".count).prefix { $0 != ":" })!
                arrivals[index, default: []].append(specs[backend])
            }
        }
        #expect(arrivals.count == total, "lines lost: \(total - arrivals.count)", sourceLocation: sourceLocation)
        #expect(arrivals.values.allSatisfy { $0.count == 1 }, "a line arrived twice", sourceLocation: sourceLocation)
        var current = 0
        var misrouted = 0
        for index in 0..<total {
            guard let backend = arrivals[index]?.first else { continue }
            if let pool = firstPool(routing: "pool.\(index)", to: backend, in: pools, from: current) {
                current = pool
            } else {
                misrouted += 1
            }
        }
        #expect(misrouted == 0, sourceLocation: sourceLocation)
        #expect(current == pools.count - 1, "the last pool never took over", sourceLocation: sourceLocation)
    }

    /// With checks off and every backend an address, the monitor has nothing due and sleeps
    /// until woken: its status (what /status and `statsrelay_backend_up` show) must follow a
    /// replaced pool all the same.
    @Test("with health checks off, the backends' status follows a replaced pool at once: the new backends listed, each up", arguments: ioDrivers)
    func statusFollowsReplacedPool(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backends = try (0..<3).map { _ in try TestBackend() }
        let relay = try InProcessRelay(backends: Array(backends[0..<2]), driver: driver) { _ in }
        #expect(relay.relay.monitor.status.map(\.backend.description) == backends[0..<2].map(\.spec))
        let next = [backends[2].spec, backends[0].spec]
        try relay.relay.replaceBackends(try next.map { try BackendAddress(parsing: $0) })
        let followed = relay.relay.monitor.waitUntil(timeoutNanoseconds: 5_000_000_000) {
            $0.map(\.backend.description) == next && $0.allSatisfy { $0.state == .up }
        }
        #expect(followed, "status: \(relay.relay.monitor.status.map(\.backend.description))")
        _ = relay.stop()
    }

    @Test("backends added, removed and reordered under traffic: every line arrives once, at the backend the pool in force routed it to", arguments: ioDrivers)
    func changesUnderTraffic(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backends = try (0..<4).map { _ in try TestBackend() }
        let specs = backends.map(\.spec)
        // A long flush interval keeps batches open when the pool changes: they must be sent to
        // the old pool's backends before the new pool takes over.
        let relay = try InProcessRelay(backends: Array(backends[0..<3]), driver: driver) { $0.flushIntervalNanoseconds = 1_000_000_000 }
        let pools: [[String]] = [
            [specs[0], specs[1], specs[2]],
            [specs[0], specs[1], specs[2], specs[3]],  // add
            [specs[0], specs[2], specs[3]],  // remove
            [specs[3], specs[2], specs[0]],  // reorder
            [specs[1], specs[3]],  // remove two, bring one back
            [specs[0], specs[1], specs[2]],  // the start again
        ]
        let datagrams = 3_000
        // The last part is sent once the last pool is in place, so that it takes over.
        let last = datagrams * (pools.count - 1) / pools.count
        let sender = try NumberedSender(to: relay.address, datagrams: datagrams, linesPerDatagram: 10, pauseMicroseconds: 100, holdBefore: last)
        for (step, pool) in pools.enumerated().dropFirst() {
            #expect(sender.waitUntilSent(datagrams * step / pools.count))
            try relay.relay.replaceBackends(try pool.map { try BackendAddress(parsing: $0) })
        }
        sender.release()
        sender.join()
        let total = datagrams * sender.linesPerDatagram
        // Every line reaches a backend while the relay runs (open batches leave within the 1 s
        // flush interval); only then is it stopped, so no line depends on the stop's drain
        // budget, which a slow worker on a loaded machine can run out of.
        var received = try collect(from: backends, expectedLines: total, seconds: 20)
        let counters = relay.stop()
        let late = try collect(from: backends, expectedLines: 0, seconds: 0.2)
        for backend in received.datagrams.indices { received.datagrams[backend] += late.datagrams[backend] }
        Self.expectArrivedOnceInPoolOrder(received.lines, specs: specs, pools: pools, total: total)
        // Every publication is applied or superseded (checked above: the pools in force never go
        // back, and the last one took over). Two published between a worker's turns merge into one
        // change to the later pool, so the count is at least one and at most one per publication.
        #expect((1...UInt64(pools.count - 1)).contains(counters[.poolChanges]), "\(counters[.poolChanges]) changes for \(pools.count - 1) publications")
        #expect(counters[.routingUpdates] >= counters[.poolChanges])
        #expect(counters[.linesForwarded] == UInt64(total))
        // Counters follow identities: every backend's sent lines equal what it received.
        for (backend, spec) in specs.enumerated() {
            #expect(counters[.linesSent, backend: spec] == UInt64(received.lines[backend].count), "\(spec)")
        }
    }
}
