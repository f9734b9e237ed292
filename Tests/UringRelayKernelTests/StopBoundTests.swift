@testable import RelayKernel
import Foundation
import Glibc
import Testing
@testable import UringRelay

/// What a stop behind a slow link left and how long it took.
struct StalledStop: Sendable {
    var driver: IOBackendChoice?
    var sent: Int
    var counters: RelayCounters
    var failures: [String]
    var stopSeconds: Double
    /// The bytes of each datagram sent.
    var datagramBytes: Int
}

@Suite("A stop's work is bounded by its budget, and what it leaves is counted", .serialized, .timeLimit(.minutes(2)), .onOwnThread)
struct StopBoundTests {
    /// Queues `count` datagrams (every fifth one empty) on a fresh listener and returns it.
    func listener(holding count: Int) throws -> UDPSocket {
        let listener = try UDPSocket.bound(to: SocketAddress(numericHost: "127.0.0.1", port: 0)!, receiveBufferBytes: 32 << 20)
        let sender = try UDPSocket.bound(to: SocketAddress(numericHost: "127.0.0.1", port: 0)!)
        for index in 0..<count {
            try sender.send(index % 5 == 0 ? [] : Array("stop.\(index):1|c".utf8), to: listener.localAddress)
        }
        return listener
    }

    @Test("discardPending takes every queued datagram, empty ones included, over several batches")
    func discardsEverything() throws {
        let queued = 5_000
        let socket = try listener(holding: queued)
        let drops = socket.kernelDrops
        #expect(drops == 0, "the listener dropped datagrams while they were queued")
        let taken = socket.discardPending()
        #expect(taken == queued)
        let pending = socket.hasPendingDatagram
        #expect(!pending)
        let again = socket.discardPending()
        #expect(again == 0)
    }

    @Test("discardPending past its deadline stops after one batch and leaves the rest queued")
    func deadlineBoundsTheWork() throws {
        let queued = 5_000
        let socket = try listener(holding: queued)
        let drops = socket.kernelDrops
        #expect(drops == 0, "the listener dropped datagrams while they were queued")
        let first = socket.discardPending(deadline: 0)
        #expect(first > 0 && first < queued, "took \(first) of \(queued) with its deadline already past")
        let pending = socket.hasPendingDatagram
        #expect(pending)
        let rest = socket.discardPending()
        #expect(rest == queued - first, "what the deadline left must still be queued, whole")
    }

    /// A relay on `driver` whose one backend is behind a 10 Mbit/s class with a 4 KiB send
    /// buffer, given 4 MB in 4 000 datagrams at once (over three seconds of the link), then
    /// stopped with a 300 ms budget: it is far behind when the stop begins, its listener still
    /// full. Its worker runs on the last CPU, away from the other tests' relays on the first.
    func stopBehindSlowLink(_ driver: IOBackendChoice) throws -> StalledStop {
        try ShapedLoopback(rate: "10mbit").run { loopback in
            let backend = try TestBackend()
            try loopback.shape(port: backend.address.port)
            let relay = try InProcessRelay(backends: [backend], driver: driver) { configuration in
                configuration.backendSendBufferBytes = 4096
                configuration.receiveBufferBytes = 64 << 20
                configuration.shutdownTimeoutNanoseconds = 300_000_000
                configuration.cpus = [WorkerThread.allowedCPUs.last ?? 0]
            }
            let sender = try UDPSocket.bound(to: SocketAddress(numericHost: "127.0.0.1", port: 0)!)
            let sent = 4_000
            let lines = (0..<40).map { "stalled.metric.\($0):1|c" }.joined(separator: "\n")
            for _ in 0..<sent { try sender.send(Array(lines.utf8), to: relay.address) }
            let start = MonotonicClock.nanoseconds()
            relay.relay.stop()
            let (counters, failures) = relay.relay.wait()
            let seconds = Double(MonotonicClock.nanoseconds() - start) / 1e9
            return StalledStop(
                driver: relay.relay.driver, sent: sent, counters: counters, failures: failures, stopSeconds: seconds,
                datagramBytes: lines.utf8.count)
        }
    }

    /// How long a relay on `driver`, on the CPU the stalled stop's worker uses, takes now to
    /// relay 256 datagrams of the stalled stop's shape (one receive batch of the portable
    /// driver, 40 lines each) to a backend with no link limit, from the first send to the last
    /// line received: this machine's speed at this moment, its load and a sanitizer's slowdown
    /// included.
    func batchSeconds(_ driver: IOBackendChoice) throws -> Double {
        let backend = try TestBackend()
        let relay = try InProcessRelay(backends: [backend], driver: driver) { configuration in
            configuration.receiveBufferBytes = 64 << 20
            configuration.cpus = [WorkerThread.allowedCPUs.last ?? 0]
        }
        let sender = try UDPSocket.bound(to: SocketAddress(numericHost: "127.0.0.1", port: 0)!)
        let datagrams = 256
        let lines = (0..<40).map { "calibration.metric.\($0):1|c" }.joined(separator: "\n")
        let start = MonotonicClock.nanoseconds()
        for _ in 0..<datagrams { try sender.send(Array(lines.utf8), to: relay.address) }
        let received = try collect(from: [backend], expectedLines: datagrams * 40, settleMilliseconds: 0)
        let seconds = Double(MonotonicClock.nanoseconds() - start) / 1e9
        #expect(received.totalLines == datagrams * 40)
        _ = relay.stop()
        return seconds
    }

    @Test("a stop far behind a slow backend ends within its budget and a few batches' work; every datagram is relayed or counted as dropped", arguments: ioDrivers)
    func stalledStopIsBounded(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        // The faster of two: a measurement only errs long (a host busy at that moment).
        let batch = min(try batchSeconds(driver), try batchSeconds(driver))
        let stop = try stopBehindSlowLink(driver)
        #expect(stop.driver == driver)
        #expect(stop.failures.isEmpty)
        // What a stop may do past its 300 ms budget is bounded in work, not in time: the batch
        // in hand when the stop is asked, the one in hand when the drain runs out, and the
        // exit's counting and join (half a batch). That many batches' time as measured here,
        // now, is the slack, so it grows with a sanitizer's slowdown or a loaded host as the
        // relay's work does.
        let bound = 0.3 + 2.5 * batch
        #expect(stop.stopSeconds < bound, "the stop took \(stop.stopSeconds) s, over \(bound) s (300 ms and 2.5 batches of \(batch) s)")
        // A stop that ignored its budget would wait at least for the 10 Mbit/s link to carry
        // the datagrams this one dropped at exit: the bound must be below that to prove anything.
        let ignoredSeconds = Double(stop.counters[.datagramsDroppedAtExit]) * Double(stop.datagramBytes) * 8 / 10_000_000
        #expect(bound < 0.3 + ignoredSeconds, "one batch took \(batch) s: the bound cannot tell a budget kept from one ignored (\(ignoredSeconds) s more)")
        let received = stop.counters[.datagramsReceived]
        let droppedAtExit = stop.counters[.datagramsDroppedAtExit]
        let droppedByKernel = stop.counters[.datagramsDroppedKernel]
        #expect(droppedAtExit > 0, "the relay was not behind when it stopped: the test proves nothing")
        #expect(droppedByKernel == 0, "the listener overflowed before the stop")
        #expect(received + droppedAtExit + droppedByKernel == UInt64(stop.sent),
                "received \(received) + dropped at exit \(droppedAtExit) + by the kernel \(droppedByKernel) of \(stop.sent)")
        #expect(stop.counters[.linesUnconfirmedAtExit] > 0, "sends still queued or in flight at the deadline are counted")
    }
}
