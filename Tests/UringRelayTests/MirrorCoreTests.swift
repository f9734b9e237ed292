import RelayKernel
import Testing
@testable import UringRelay

/// The relay core with a mirror pool: holding, exit accounting and delivery counting keep the
/// mirror apart from the primary pool.
@Suite("Relay core with a mirror pool")
struct MirrorCoreTests {
    /// A worker's settings: two primary backends (policy `policy`), a mirror of one at rate 1.
    static func settings(policy: DownPolicy) throws -> WorkerSettings {
        let backends = try ["127.0.0.1:9001", "127.0.0.1:9002"].map { try BackendAddress(parsing: $0) }
        let addresses = backends.map { SocketAddress(numericHost: $0.host, port: $0.port)! }
        let routing = RoutingState(pool: BackendPool(backends: backends, addresses: addresses, policy: policy))
        var settings = WorkerSettings(
            configuration: RelayConfiguration(backends: backends), listeners: [SocketAddress(numericHost: "127.0.0.1", port: 0)!],
            routing: routing, holdBudget: HoldBudget(totalBytes: 1 << 20, replayBytesPerSecond: 1 << 20, workers: 1))
        settings.mirror = MirrorPool(
            backends: [try BackendAddress(parsing: "127.0.0.1:9101")], addresses: [SocketAddress(numericHost: "127.0.0.1", port: 9101)!],
            hashMode: .jump, rate: 1)
        return settings
    }

    static func datagram(_ lines: [String]) -> [UInt8] { Array(lines.joined(separator: "\n").utf8) }

    @Test("under hold with every primary backend down, primary packets are held and the mirror's go out")
    func mirrorNeverHeld() throws {
        let settings = try Self.settings(policy: .hold)
        settings.routing.publish(down: [true, true], addresses: settings.routing.current.addresses)
        var core = try RelayCore(settings: settings, now: 0)
        core.beginTurn(now: 0)
        let lines = (0..<10).map { "held.\($0):1|c" }
        let bytes = Self.datagram(lines)
        core.receive(.datagram(length: bytes.count), bytes.span.bytes, listener: 0, now: 0)
        // Past the flush interval: every batch closes.
        _ = core.endTurn(now: settings.flushIntervalNanoseconds + 1, moreToReceive: false)
        var handedOut: [Int] = []
        while let (slot, backend) = core.nextOutgoing() {
            handedOut.append(backend)
            _ = core.sendCompleted(slot: slot, result: Int32(core.sendBuffers.length(of: slot)))
        }
        #expect(handedOut == [2], "only the mirror's packet goes out: \(handedOut)")
        let counters = core.counters
        #expect(counters[.linesHeld] == UInt64(lines.count))
        #expect(counters[.mirrorLines] == UInt64(lines.count))
    }

    @Test("a mirror backend's delivery report goes to the mirror's counters, never a primary backend's")
    func deliveryCountedApart() throws {
        var core = try RelayCore(settings: try Self.settings(policy: .rehash), now: 0)
        var report = DeliveryLedger.Report()
        report.sent.lines = 7
        report.sent.packets = 1
        report.refused.lines = 3
        core.countDelivery(report, backend: "mirror/127.0.0.1:9001")
        let counters = core.counters
        #expect(counters[.mirrorLinesSent] == 7)
        #expect(counters[.mirrorLinesDroppedRefused] == 3)
        #expect(counters[.linesSent, backend: 0] == 0)
        #expect(counters[.linesDroppedRefused] == 0)
        #expect(counters.countedBackends == ["127.0.0.1:9001", "127.0.0.1:9002"])
    }

    @Test("at exit, the mirror's unsent lines are counted as the mirror's")
    func exitAccounting() throws {
        var core = try RelayCore(settings: try Self.settings(policy: .rehash), now: 0)
        core.beginTurn(now: 0)
        let bytes = Self.datagram((0..<6).map { "exit.\($0):1|c" })
        core.receive(.datagram(length: bytes.count), bytes.span.bytes, listener: 0, now: 0)
        let counters = core.finish(unrelayedDatagrams: 0, sendsInFlight: 0, now: 1)
        #expect(counters[.linesDroppedUnsentAtExit] == 6)
        #expect(counters[.mirrorLinesDroppedUnsentAtExit] == 6)
        #expect(counters[.mirrorLinesInFlightAtExit] == 0)
    }
}
