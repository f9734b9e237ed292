import Foundation
import Testing
@testable import UringRelay

/// A line of `count` bytes: `name:` then digits.
private func line(_ count: Int, name: String) -> String {
    name + ":" + String(repeating: "5", count: count - name.utf8.count - 1)
}

@Suite("Packet length on the wire", .serialized, .timeLimit(.minutes(1)), .onOwnThread)
struct PacketLengthKernelTests {
    /// A client over IPv4 sends at most 65 507 bytes: one such line, lines of exactly
    /// `--packet-len`, one byte either side of it, and short ones around them.
    @Test("no datagram leaves longer than --packet-len but a lone longer line, at its own length; a 65 507-byte line arrives whole; no send fails",
          arguments: ioDrivers)
    func wireLengths(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backends = [try TestBackend()]
        let relay = try InProcessRelay(backends: backends, driver: driver) {
            $0.packetBytes = 1_400
            $0.maxDatagramBytes = 65_535
        }
        #expect(relay.relay.driver == driver)
        let largest = line(65_507, name: "largest")
        let edges = [1_399, 1_400, 1_401].map { line($0, name: "edge.\($0)") }
        let short = (0..<200).map { "short.\($0):\($0)|c" }
        let datagrams = [largest] + edges + [short.joined(separator: "\n")] + edges.map { "x:1|c\n" + $0 + "\ny:2|c" }
        try send(datagrams, to: relay.address)
        let expected = [largest] + edges + short + edges.flatMap { ["x:1|c", $0, "y:2|c"] }
        let received = try collect(from: backends, expectedLines: expected.count)
        let counters = relay.stop()
        #expect(received.lines[0].sorted() == expected.sorted())
        for datagram in received.datagrams[0] where datagram.utf8.count > 1_400 || !datagram.hasSuffix("\n") {
            #expect(!datagram.contains("\n"), "a packet over --packet-len or without a final newline holds one line: \(datagram.prefix(60))…")
            #expect(datagram.utf8.count >= 1_400)
        }
        #expect(received.datagrams[0].contains(largest), "the 65 507-byte line arrived as one datagram of exactly its length")
        #expect(received.datagrams[0].filter { $0 == edges[1] }.count == 2, "a line of exactly --packet-len went out as exactly --packet-len bytes")
        #expect(counters[.sendErrors] == 0 && counters[.linesDroppedSendError] == 0)
        #expect(counters[.linesDroppedTooLong] == 0)
        #expect(counters[.linesForwarded] == UInt64(expected.count))
    }
}
