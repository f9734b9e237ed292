@testable import RelayKernel
import Foundation
import Testing
@testable import UringRelay

/// Hostile and ordinary datagrams together, with what the relay must make of each, counted by
/// the test itself from how it built them (never from the relay's own scanner).
struct AccountingMix {
    /// Every datagram, as sent.
    var datagrams: [[UInt8]] = []
    /// The valid lines (without `\r`), by the backend the hash sends each to.
    var expected: [[String]]
    var truncated = 0
    var wholeBytes = 0
    var missingColon = 0
    var emptyName = 0
    var nulByte = 0
    var emptyLines = 0
    var empties = 0
    var longLines = 0

    var validLines: Int { expected.reduce(0) { $0 + $1.count } }

    /// `count` datagrams cycling through eight kinds: plain lines; lines mixed with junk (no
    /// colon, empty name, a NUL byte); empty datagrams; datagrams over `maxDatagram` (dropped
    /// whole as truncated); a line longer than `packetBytes` among short ones; CRLF and empty
    /// lines; a datagram of exactly `maxDatagram` bytes; a lone NUL byte.
    init(count: Int, backends: Int, maxDatagram: Int, packetBytes: Int) {
        expected = Array(repeating: [], count: backends)
        var serial = 0
        func valid(_ text: String) -> String {
            expected[expectedBackend(of: text, backends: backends)].append(text)
            return text
        }
        func next() -> Int {
            serial += 1
            return serial
        }
        for index in 0..<count {
            var lines: [String]
            var separator = "\n"
            switch index % 8 {
            case 0:
                lines = (0..<(1 + index % 6)).map { _ in valid("acct.plain.\(next() % 50):\(serial)|c") }
            case 1:
                lines = [
                    valid("acct.mixed.\(next()):1|ms"), "junk without colon \(next())", ":\(next())|c",
                    "acct.nul\u{0}.\(next()):1|c", valid("acct.mixed.\(next()):2|g|#tag:x"),
                ]
                missingColon += 1
                emptyName += 1
                nulByte += 1
            case 2:
                empties += 1
                lines = []
            case 3:
                var over: [String] = []
                while over.joined(separator: "\n").utf8.count <= maxDatagram { over.append("acct.over.\(next()):1|c") }
                lines = over
                truncated += 1
            case 4:
                let long = "acct.long.\(next()):" + String(repeating: "9", count: packetBytes + 100) + "|g"
                lines = [valid("acct.short.\(next()):1|c"), valid(long), valid("acct.short.\(next()):2|c")]
                longLines += 1
            case 5:
                // "a\r\n\r\nb\r\n\r\n": two empty lines; nothing after the last "\r\n" is a line.
                lines = [valid("acct.crlf.\(next()):1|c"), "", valid("acct.crlf.\(next()):2|c"), "", ""]
                separator = "\r\n"
                emptyLines += 2
            case 6:
                let head = "acct.exact.\(next()):"
                lines = [valid(head + String(repeating: "5", count: maxDatagram - head.utf8.count))]
            default:
                lines = ["\u{0}"]
                nulByte += 1
            }
            let bytes = Array(lines.joined(separator: separator).utf8)
            if index % 8 == 6 { precondition(bytes.count == maxDatagram) }
            if index % 8 != 3 { wholeBytes += bytes.count }
            datagrams.append(bytes)
        }
    }
}

@Suite("Accounting holds on both drivers", .serialized, .timeLimit(.minutes(1)), .onOwnThread)
struct AccountingTests {
    @Test("datagrams received = relayed + counted drops; lines received = forwarded + dropped by reason; every forwarded line arrives once", arguments: ioDrivers)
    func accountingBalances(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let maxDatagram = 1024
        let packetBytes = 300
        let backends = try (0..<2).map { _ in try TestBackend() }
        let relay = try InProcessRelay(backends: backends, driver: driver) {
            $0.maxDatagramBytes = maxDatagram
            $0.packetBytes = packetBytes
        }
        let mix = AccountingMix(count: 1_200, backends: 2, maxDatagram: maxDatagram, packetBytes: packetBytes)
        let sender = try UDPSocket.bound(to: SocketAddress(numericHost: "127.0.0.1", port: 0)!)
        for datagram in mix.datagrams { try sender.send(datagram, to: relay.address) }
        let received = try collect(from: backends, expectedLines: mix.validLines)
        let counters = relay.stop()
        let late = try collect(from: backends, expectedLines: 0, seconds: 0.2)
        #expect(late.totalLines == 0, "lines arrived after the relay reported them all sent")

        // Datagrams: each one sent is counted once, as relayed or by why it was not.
        let sent = UInt64(mix.datagrams.count)
        #expect(counters[.datagramsReceived] + counters[.datagramsTruncated] + counters[.datagramsMalformedHeader] == sent)
        #expect(counters[.datagramsReceived] == sent - UInt64(mix.truncated), "empty datagrams are received datagrams too")
        #expect(counters[.datagramsTruncated] == UInt64(mix.truncated))
        #expect(counters[.datagramsMalformedHeader] == 0)
        #expect(counters[.datagramsDroppedAtExit] == 0)
        #expect(counters[.bytesReceived] == UInt64(mix.wholeBytes))

        // Lines: each one received is forwarded or dropped for one counted reason.
        let droppedByReason = counters[.linesDroppedMissingColon] + counters[.linesDroppedEmptyName]
            + counters[.linesDroppedNulByte] + counters[.linesDroppedNoSendBuffer] + counters[.linesDroppedBackendDown]
        #expect(counters[.linesReceived] == counters[.linesForwarded] + droppedByReason)
        #expect(counters[.linesForwarded] == UInt64(mix.validLines))
        #expect(counters[.linesDroppedMissingColon] == UInt64(mix.missingColon))
        #expect(counters[.linesDroppedEmptyName] == UInt64(mix.emptyName))
        #expect(counters[.linesDroppedNulByte] == UInt64(mix.nulByte))
        #expect(counters[.linesDroppedNoSendBuffer] == 0)
        #expect(counters[.linesDroppedBackendDown] == 0)
        #expect(counters[.emptyLines] == UInt64(mix.emptyLines))

        // Sends: every forwarded line is at its backend exactly once, and counted as sent there.
        for backend in 0..<2 {
            let lines = received.lines[backend]
            #expect(lines.count == mix.expected[backend].count, "backend \(backend)")
            #expect(lines.sorted() == mix.expected[backend].sorted(), "backend \(backend)")
            #expect(counters[.linesSent, backend: backend] == UInt64(mix.expected[backend].count))
            #expect(counters[.packetsSent, backend: backend] == UInt64(received.datagrams[backend].count))
            for datagram in received.datagrams[backend] where datagram.utf8.count > packetBytes {
                #expect(datagram.split(separator: "\n").count == 1, "a packet over --packet-len holds one long line")
            }
        }
        #expect(received.lines.joined().filter { $0.hasPrefix("acct.long.") }.count == mix.longLines)
        #expect(counters[.packetsSent] == UInt64(received.datagrams.reduce(0) { $0 + $1.count }))
        #expect(counters[.sendErrors] == 0 && counters[.linesDroppedSendError] == 0)
        #expect(counters[.linesUnconfirmedAtExit] == 0)
    }
}
