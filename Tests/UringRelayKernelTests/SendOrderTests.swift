@testable import RelayKernel
import Foundation
import Glibc
import Testing
@testable import UringRelay

/// What one relay run behind a shaped loopback gave.
struct OrderedRun: Sendable {
    var driver: IOBackendChoice?
    var lines: [String]
    var counters: RelayCounters
    var failures: [String]
    var shaped: (sent: Int, dropped: Int, overlimits: Int)
}

@Suite("Sends to one backend leave in the order they were packed, under send-buffer pressure", .serialized, .timeLimit(.minutes(2)), .onOwnThread)
struct SendOrderTests {
    /// Lines in all, sent in datagrams of `linesPerDatagram`.
    static let lineCount = 30_000
    static let linesPerDatagram = 50

    /// The lines in the order the client sends them; the sequence number is fixed-width so
    /// that a line's place can be read back from it.
    static func line(_ index: Int) -> String {
        "order.\(String(index + 1_000_000).dropFirst()):1|c"
    }

    /// A relay on `driver` whose one backend is behind a 20 Mbit/s class on a private loopback,
    /// with a 4 KiB `SO_SNDBUF` on its backend socket (the kernel's minimum, two packets): the
    /// client's ~0.5 MB of lines arrive much faster than the backend's share of the link, so
    /// the relay's sends find the send buffer full again and again.
    func relayBehindSlowLink(_ driver: IOBackendChoice) throws -> OrderedRun {
        let loopback = ShapedLoopback(rate: "20mbit")
        return try loopback.run { loopback in
            let backend = try TestBackend()
            try loopback.shape(port: backend.address.port)
            let relay = try InProcessRelay(backends: [backend], driver: driver) { configuration in
                configuration.backendSendBufferBytes = 4096
                // Away from the other tests' relays, which run on the first CPU.
                configuration.cpus = [WorkerThread.allowedCPUs.last ?? 0]
            }
            let sender = try UDPSocket.bound(to: SocketAddress(numericHost: "127.0.0.1", port: 0)!)
            var datagram: [UInt8] = []
            for index in 0..<Self.lineCount {
                datagram += Array(Self.line(index).utf8) + [UInt8(ascii: "\n")]
                if (index + 1) % Self.linesPerDatagram == 0 {
                    try sender.send(datagram, to: relay.address)
                    datagram.removeAll(keepingCapacity: true)
                }
            }
            let received = try collect(from: [backend], expectedLines: Self.lineCount, seconds: 20)
            relay.relay.stop()
            let (counters, failures) = relay.relay.wait()
            return OrderedRun(
                driver: relay.relay.driver, lines: received.lines[0], counters: counters, failures: failures,
                shaped: try loopback.shapedClassStatistics())
        }
    }

    @Test("behind a slow link with a tiny send buffer, every line arrives once and in the order it was sent", arguments: ioDrivers)
    func linesKeepTheirOrder(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let run = try relayBehindSlowLink(driver)
        #expect(run.driver == driver)
        #expect(run.failures.isEmpty)
        // The link really held packets back: the relay's sends met a full send buffer.
        #expect(run.shaped.overlimits > 0, "the shaped class never made a packet wait: \(run.shaped)")
        #expect(run.shaped.dropped == 0, "the shaped class dropped packets: \(run.shaped)")
        #expect(run.lines.count == Self.lineCount, "\(run.lines.count) of \(Self.lineCount) lines arrived")
        #expect(Set(run.lines).count == run.lines.count, "a line arrived twice")
        let expected = Set((0..<Self.lineCount).map(Self.line))
        #expect(run.lines.allSatisfy(expected.contains), "a line arrived that was never sent")
        // Sequence numbers are fixed-width, so text order is send order.
        let overtaken = zip(run.lines, run.lines.dropFirst()).filter { $0 >= $1 }
        #expect(overtaken.isEmpty, "\(overtaken.count) lines arrived after a newer one, first: \(overtaken.first.map { "\($0.1) after \($0.0)" } ?? "")")
        #expect(run.counters[.linesSent, backend: 0] == UInt64(Self.lineCount))
        #expect(run.counters[.sendErrors] == 0)
    }
}
