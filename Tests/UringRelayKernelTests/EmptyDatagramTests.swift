@testable import RelayKernel
import Foundation
import Testing
@testable import UringRelay

/// A flood of near-empty datagrams from a careless or hostile client.
enum JunkDatagram: String, CaseIterable, Sendable {
    /// Zero bytes: ends the io_uring multishot receive, like the end of a stream.
    case empty
    /// One byte (`\n`, an empty line): the comparison, which costs a receive and nothing else.
    case oneByte

    var bytes: [UInt8] {
        switch self {
        case .empty: []
        case .oneByte: [UInt8(ascii: "\n")]
        }
    }
}

@Suite("Empty datagrams cost no more than 1-byte ones (issue 8, defect 1)", .serialized, .timeLimit(.minutes(2)))
struct EmptyDatagramTests {
    /// The steady client: datagrams of ten lines, paced.
    static let steadyDatagrams = 4_000
    static let steadyPerSecond = 2_000
    static let linesPerDatagram = 10
    /// The junk client beside it, paced; bounded by count.
    static let junkDatagrams = 20_000
    static let junkPerSecond = 10_000

    @Test("a steady client loses no line beside a flood of junk datagrams, and every datagram is counted", arguments: ioDrivers, JunkDatagram.allCases)
    func steadyStreamBesideJunk(driver: IOBackendChoice, junk: JunkDatagram) throws {
        try requireDriver(driver)
        let backends = [try TestBackend()]
        // A socket buffer that tells the defect from a busy machine. The defect (issue 8) is a
        // sustained deficit: each empty datagram cost a 250 µs wait, so the worker took at most
        // ~4k of the 10k a second, and over the 2 s run some 12 000 datagrams pile up, far past
        // this buffer (2 MiB asked, 4 MiB granted: ~4 000 small datagrams). A worker starved for
        // a moment by the other suites in this process and the builds beside it falls behind
        // only briefly, which the buffer absorbs (~300 ms of this traffic); 256 KiB (~25 ms) did
        // not, and the test failed on a loaded 2-CPU machine with nothing wrong in the relay.
        let relay = try InProcessRelay(backends: backends, driver: driver) { $0.receiveBufferBytes = 2 << 20 }
        let lines = Self.linesPerDatagram
        var expected: [String] = []
        expected.reserveCapacity(Self.steadyDatagrams * lines)
        for index in 0..<Self.steadyDatagrams {
            for line in 0..<lines { expected.append("steady.\(index).\(line):\(line)|c") }
        }
        let junkBytes = junk.bytes
        let junkSender = try PacedSender(to: relay.address, count: Self.junkDatagrams, perSecond: Self.junkPerSecond) { _ in
            junkBytes
        }
        let steadySender = try PacedSender(to: relay.address, count: Self.steadyDatagrams, perSecond: Self.steadyPerSecond) {
            index in Array((0..<lines).map { "steady.\(index).\($0):\($0)|c" }.joined(separator: "\n").utf8)
        }
        let received = try collect(from: backends, expectedLines: expected.count, seconds: 20)
        let steady = steadySender.finish()
        let flood = junkSender.finish()
        let counters = relay.stop()
        #expect(steady.sent == Self.steadyDatagrams && steady.failed == 0)
        #expect(flood.sent == Self.junkDatagrams && flood.failed == 0)

        let arrived = Set(received.lines[0])
        let lost = expected.count - expected.filter(arrived.contains).count
        #expect(lost == 0, "lost \(lost) of \(expected.count) steady lines beside \(Self.junkDatagrams) \(junk) datagrams")
        #expect(received.lines[0].count == arrived.count, "a line arrived twice")
        #expect(arrived.count == expected.count)
        // Every datagram, the empty ones too, reached the relay and was counted.
        #expect(
            counters[.datagramsReceived] == UInt64(Self.steadyDatagrams + Self.junkDatagrams),
            "\(counters[.datagramsReceived]) datagrams received of \(Self.steadyDatagrams + Self.junkDatagrams) sent")
        #expect(counters[.linesForwarded] == UInt64(expected.count))
        #expect(counters[.emptyLines] == (junk == .oneByte ? UInt64(Self.junkDatagrams) : 0))
    }
}
