import Foundation
import RoutingReference
import Testing
@testable import UringRelay

/// Per-mirror-backend counters through a real relay: a live and a dead UDP mirror backend
/// are told apart, and their counts add up to the pool-wide ones.
@Suite("Per-mirror-backend counters end to end", .serialized, .timeLimit(.minutes(1)), .onOwnThread)
struct MirrorBackendCounterKernelTests {
    @Test("a live and a dead mirror backend: the live one's lines counted sent under its name, the dead one's refused under its own; the pool-wide counters are their sums",
          arguments: ioDrivers)
    func liveAndDead(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let primaries = try (0..<2).map { _ in try TestBackend() }
        let live = try TestBackend()
        let dead = "127.0.0.1:\(try unusedPort())"
        let relay = try InProcessRelay(backends: primaries, driver: driver) { configuration in
            configuration.mirror = [try! BackendAddress(parsing: live.spec), try! BackendAddress(parsing: dead)]
        }
        let lines = mirrorLines(3_000, prefix: "per-mirror")
        let toLive = lines.filter { ReferenceRouting.primary(metricName(of: $0), backends: 2) == 0 }
        try send(datagrams(lines, perDatagram: 6), to: relay.address)
        let received = try collect(from: primaries + [live], expectedLines: lines.count + toLive.count)
        #expect(poll(seconds: 5) { relay.relay.liveCounters()[.linesDroppedRefused, mirror: dead] > 0 })
        let counters = relay.stop()
        #expect(received.lines[2].sorted() == toLive.sorted())
        #expect(counters.mirrorBackends == [live.spec, dead])
        #expect(counters[.linesSent, mirror: live.spec] + counters[.mirrorLinesUnconfirmedAtExit] >= UInt64(toLive.count))
        #expect(counters[.linesDroppedRefused, mirror: live.spec] == 0)
        #expect(counters[.linesDroppedRefused, mirror: dead] > 0)
        #expect(counters[.packetsSent, mirror: live.spec] == UInt64(received.datagrams[2].count) || counters[.mirrorLinesUnconfirmedAtExit] > 0)
        for counter in MirrorBackendCounter.allCases {
            #expect(counters[counter, mirror: live.spec] + counters[counter, mirror: dead] == counters[counter.total], "\(counter.name)")
        }
    }
}
