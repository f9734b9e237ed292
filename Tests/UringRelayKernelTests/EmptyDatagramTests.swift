@testable import RelayKernel
import Foundation
import Glibc
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

@Suite("Empty datagrams cost no more than 1-byte ones (issue 8, defect 1)", .serialized, .timeLimit(.minutes(2)), .onOwnThread)
struct EmptyDatagramTests {
    /// The steady client: datagrams of ten lines, paced.
    static let steadyDatagrams = 4_000
    static let steadyPerSecond = 2_000
    static let linesPerDatagram = 10
    /// The junk client beside it, paced; bounded by count.
    static let junkDatagrams = 20_000
    static let junkPerSecond = 10_000

    /// How long the relay's worker thread has waited for a CPU while runnable so far: the
    /// second field of its `/proc/PID/task/TID/schedstat` (`run_delay`, ns).
    static func workerRunDelay(pid: Int32) -> UInt64? {
        let tasks = "/proc/\(pid)/task"
        for task in (try? FileManager.default.contentsOfDirectory(atPath: tasks)) ?? [] {
            guard let comm = try? String(contentsOfFile: "\(tasks)/\(task)/comm", encoding: .utf8),
                  comm.trimmingCharacters(in: .whitespacesAndNewlines) == "statsrelay-w0",
                  let stat = try? String(contentsOfFile: "\(tasks)/\(task)/schedstat", encoding: .utf8) else { continue }
            let fields = stat.split(separator: " ")
            return fields.count > 1 ? UInt64(fields[1]) : nil
        }
        return nil
    }

    /// Longest the worker may wait for a CPU, in all, and still owe nothing: less than the time
    /// its socket buffer (2 MiB asked, 4 MiB granted, some 4 000 of these datagrams) holds of
    /// this traffic (12 000 datagrams a second: ~300 ms), even were the waits all at once.
    static let absorbedRunDelay: UInt64 = 150_000_000

    @Test("a steady client loses no line beside a flood of junk datagrams, and every datagram is counted", arguments: ioDrivers, JunkDatagram.allCases)
    func steadyStreamBesideJunk(driver: IOBackendChoice, junk: JunkDatagram) throws {
        try requireDriver(driver)
        let backends = [try TestBackend()]
        // A child relay, so its worker's waits for a CPU can be read (the defect, issue 8, made
        // the worker wait with datagrams pending: off the run queue, not on it).
        let relay = try RelayProcess(driver: driver, ["--bind", "127.0.0.1", "--port", "0", "--threads", "1", "--rcvbuf", "2M", backends[0].spec])
        let address = try relay.listenAddress()
        let delayBefore = Self.workerRunDelay(pid: relay.process.processIdentifier)
        let lines = Self.linesPerDatagram
        var expected: [String] = []
        expected.reserveCapacity(Self.steadyDatagrams * lines)
        for index in 0..<Self.steadyDatagrams {
            for line in 0..<lines { expected.append("steady.\(index).\(line):\(line)|c") }
        }
        let junkBytes = junk.bytes
        let junkSender = try PacedSender(to: address, count: Self.junkDatagrams, perSecond: Self.junkPerSecond) { _ in junkBytes }
        let steadySender = try PacedSender(to: address, count: Self.steadyDatagrams, perSecond: Self.steadyPerSecond) {
            index in Array((0..<lines).map { "steady.\(index).\($0):\($0)|c" }.joined(separator: "\n").utf8)
        }
        let steady = steadySender.finish()
        let flood = junkSender.finish()
        // Everything sent is in the relay's socket, dropped by the kernel, or relayed: the stop
        // drains the socket and sends the rest.
        let delayAfter = Self.workerRunDelay(pid: relay.process.processIdentifier)
        relay.signal(SIGTERM)
        #expect(relay.waitForExit() == 0)
        let received = try collect(from: backends, expectedLines: expected.count, seconds: 5)
        #expect(steady.sent == Self.steadyDatagrams && steady.failed == 0)
        #expect(flood.sent == Self.junkDatagrams && flood.failed == 0)
        let report = lastReport(in: relay.standardError)
        let datagrams = report["statsrelay.datagrams_received"] ?? 0
        let kernelDrops = report["statsrelay.datagrams_dropped.kernel"] ?? 0

        // Every datagram, the empty ones too, reached the relay and was counted, or was counted
        // as dropped by the kernel; every line that arrived was forwarded once.
        let sent = UInt64(Self.steadyDatagrams + Self.junkDatagrams)
        #expect(datagrams + kernelDrops == sent, "\(datagrams) received + \(kernelDrops) dropped of \(sent) sent")
        let arrived = Set(received.lines[0])
        #expect(received.lines[0].count == arrived.count, "a line arrived twice")
        #expect(arrived.isSubset(of: Set(expected)))
        #expect(report["statsrelay.lines_forwarded"] == UInt64(arrived.count))
        #expect(report["statsrelay.lines_empty"] == (junk == .oneByte ? datagrams - UInt64(arrived.count / lines) : 0))

        // No line lost, unless the worker was kept off the CPU for longer than its socket
        // buffer covers: a machine too busy for the measurement, recorded as a known issue
        // rather than charged to the relay. A worker that waits with datagrams pending (the
        // defect) is not on the run queue, and fails here.
        let lost = expected.count - arrived.count
        let waited = (delayAfter ?? 0) &- (delayBefore ?? 0)
        let starved = delayBefore == nil || delayAfter == nil || waited > Self.absorbedRunDelay
        withKnownIssue("the worker waited \(waited / 1_000_000) ms for a CPU: the machine was too busy", isIntermittent: true) {
            #expect(lost == 0, "lost \(lost) of \(expected.count) steady lines (\(kernelDrops) datagrams dropped by the kernel) beside \(Self.junkDatagrams) \(junk) datagrams; the worker waited \(waited / 1_000_000) ms for a CPU")
        } when: { starved }
    }
}
