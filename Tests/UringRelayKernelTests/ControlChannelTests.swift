@testable import RelayKernel
import Foundation
import Glibc
import Testing
@testable import UringRelay

/// Each worker's control channel: commands applied in order at a turn boundary and awaited by
/// the sender, a stopped worker refusing at once, and reloads of the packet length and flush
/// interval under live traffic with every line arriving exactly once.
@Suite("Worker control channel", .serialized, .timeLimit(.minutes(1)), .onOwnThread)
struct ControlChannelTests {
    /// Two workers, both pinned to the next test CPU.
    static func twoWorkers(_ configuration: inout RelayConfiguration) {
        configuration.threads = 2
        let cpu = nextTestCPU()
        configuration.cpus = [cpu, cpu]
    }

    @Test("commands sent to every worker are applied in order and awaited: of two packet lengths the later holds for every datagram sent after the await; a stopped worker refuses at once", arguments: ioDrivers)
    func commandsInOrder(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let relay = try InProcessRelay(backends: [backend], driver: driver) { configuration in
            Self.twoWorkers(&configuration)
            configuration.flushIntervalNanoseconds = 2_000_000
        }
        #expect(relay.relay.driver == driver)
        let answers = relay.relay.tellWorkers([
            .applySettings(packetBytes: 300, flushIntervalNanoseconds: 2_000_000),
            .applySettings(packetBytes: 64, flushIntervalNanoseconds: 2_000_000),
        ], timeoutNanoseconds: 10_000_000_000)
        #expect(answers == CommandReceipt.Outcome(applied: 2, refused: 0, unanswered: 0))
        // 20 lines of 14-15 bytes in one datagram: at 300 bytes one packet, at 64 at least five.
        let lines = (0..<20).map { "order.\($0):1|c" }
        try send([lines.joined(separator: "\n")], to: relay.address)
        let received = try collect(from: [backend], expectedLines: lines.count)
        #expect(received.lines[0].sorted() == lines.sorted(), "every line once, whole")
        #expect(received.datagrams[0].allSatisfy { $0.utf8.count <= 64 }, "\(received.datagrams[0].map(\.utf8.count))")
        let counters = relay.stop()
        #expect(counters[.linesForwarded] == UInt64(lines.count))
        #expect(counters[.poolChanges] == 0, "a new packet length is no pool change")

        // Both workers have stopped: a command is refused by each at once, not waited for.
        let late = relay.relay.tellWorkers([.followPool], timeoutNanoseconds: 10_000_000_000)
        #expect(late == CommandReceipt.Outcome(applied: 0, refused: 2, unanswered: 0))
    }

    @Test("a reload changes the packet length and flush interval of every worker and reports success once each applied it", arguments: ioDrivers)
    func reloadSettings(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let relay = try InProcessRelay(backends: [backend], driver: driver, configure: Self.twoWorkers)
        #expect(relay.relay.driver == driver)
        var next = relay.relay.configurationInForce
        next.packetBytes = 48
        // Long enough that only the stop would send a batch left open: the datagram's lines
        // must still arrive split at 48 bytes.
        next.flushIntervalNanoseconds = 20_000_000
        let plan = try relay.relay.reload(to: next)
        #expect(plan.applied.map(\.key) == ["packet-len", "flush-interval"])
        #expect(plan.workersNotApplied == 0)
        #expect(relay.relay.reloads.succeeded == 1)
        #expect(relay.relay.configurationInForce.packetBytes == 48)
        let lines = (0..<12).map { "reload.\($0):1|c" }
        try send([lines.joined(separator: "\n")], to: relay.address)
        let received = try collect(from: [backend], expectedLines: lines.count)
        #expect(received.lines[0].sorted() == lines.sorted())
        #expect(received.datagrams[0].allSatisfy { $0.utf8.count <= 48 }, "\(received.datagrams[0].map(\.utf8.count))")
        _ = relay.stop()
        // After the stop the workers refuse: the reload is reported as not applied, and counted.
        next.packetBytes = 1400
        let refused = try relay.relay.reload(to: next)
        #expect(refused.workersNotApplied == 2)
        #expect(relay.relay.reloads.failed == 1)
    }

    @Test("packet length and flush interval reloaded 12 times under live traffic: every line arrives exactly once and whole, no packet over the largest length, and after the last reload none over its length", arguments: ioDrivers)
    func reloadsUnderTraffic(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backends = try (0..<2).map { _ in try TestBackend() }
        let relay = try InProcessRelay(backends: backends, driver: driver) { configuration in
            configuration.flushIntervalNanoseconds = 1_000_000_000
            // At 48-64 bytes a packet a worker sharing its CPU with other tests can fall behind
            // the sender: the stop drains the socket whole instead of counting the rest at exit.
            configuration.shutdownTimeoutNanoseconds = 15_000_000_000
        }
        #expect(relay.relay.driver == driver)
        let datagrams = 4_000
        let sender = try NumberedSender(to: relay.address, datagrams: datagrams, linesPerDatagram: 10, pauseMicroseconds: 100)
        let settings: [(packetBytes: Int, flush: UInt64)] = [
            (512, 1_000_000), (1400, 1_000_000_000), (200, 5_000_000), (900, 500_000_000), (64, 2_000_000), (1400, 10_000_000),
        ]
        let reloads = 12
        for step in 0..<reloads {
            #expect(sender.waitUntilSent(datagrams * (step + 1) / (reloads + 1)))
            var next = relay.relay.configurationInForce
            (next.packetBytes, next.flushIntervalNanoseconds) = settings[step % settings.count]
            let plan = try relay.relay.reload(to: next)
            #expect(plan.workersNotApplied == 0)
        }
        sender.join()
        // The last reload (1400) is in force; one last one to 100 bytes, then marked lines.
        var last = relay.relay.configurationInForce
        last.packetBytes = 100
        #expect(try relay.relay.reload(to: last).workersNotApplied == 0)
        let marked = (0..<40).map { "last.\($0):1|c" }
        try send([marked.joined(separator: "\n")], to: relay.address)
        let counters = relay.stop()

        let total = datagrams * sender.linesPerDatagram
        let received = try collect(from: backends, expectedLines: total + marked.count, seconds: 20)
        var seen = Array(repeating: 0, count: total)
        var other: [String] = []
        for line in received.lines.joined() {
            if line.hasPrefix("pool."), line.hasSuffix(":1|c"), let index = Int(line.dropFirst(5).dropLast(4)), index < total {
                seen[index] += 1
            } else {
                other.append(line)
            }
        }
        #expect(seen.filter { $0 == 0 }.count == 0, "lines lost")
        #expect(seen.filter { $0 > 1 }.count == 0, "lines sent twice")
        #expect(other.sorted() == marked.sorted(), "a line split, or not one of those sent")
        let datagramsOut = received.datagrams.joined()
        #expect(datagramsOut.allSatisfy { $0.utf8.count <= 1400 })
        let lastPackets = datagramsOut.filter { $0.contains("last.") }
        #expect(!lastPackets.isEmpty && lastPackets.allSatisfy { $0.utf8.count <= 100 }, "\(lastPackets.map(\.utf8.count))")
        #expect(counters[.linesForwarded] == UInt64(total + marked.count), "\(counters.report())")
        #expect(relay.relay.reloads.succeeded == UInt64(reloads + 1))
    }
}
