@testable import RelayKernel
import Testing
@testable import UringRelay

/// A line of `count` bytes: `name:` then digits, so it is a valid StatsD line.
private func line(_ count: Int, name: String = "len") -> String {
    precondition(count > name.utf8.count + 1)
    return name + ":" + String(repeating: "7", count: count - name.utf8.count - 1)
}

/// Relays `datagram` through a one-backend processor and returns the packets it made, as bytes,
/// with the processor's counters.
private func process(
    _ datagram: [UInt8], packetBytes: Int, maxDatagramBytes: Int = 65_535
) throws -> (packets: [[UInt8]], counters: RelayCounters) {
    var processor = try DatagramProcessor(router: Router(backendCount: 1), packetBytes: packetBytes, maxDatagramBytes: maxDatagramBytes)
    processor.receive(.datagram(length: datagram.count), datagram.span.bytes, now: 0)
    processor.assembler.closeAll()
    var packets: [[UInt8]] = []
    while let slot = processor.assembler.nextReady() {
        packets.append(processor.assembler.pool.withBytes(ofSlot: slot) { bytes in bytes.withUnsafeBytes { Array($0) } })
        _ = processor.assembler.completeSend(slot)
    }
    return (packets, processor.counters)
}

@Suite("Packet length: no datagram over --packet-len but a lone line, and the longest line UDP carries")
struct PacketLengthTests {
    /// Lines around the limit: one short of filling a packet with their newline, exactly
    /// filling it, exactly `packetBytes` long, one longer.
    @Test("every packet fits in --packet-len, newlines included; a line that cannot fit with its newline goes alone without it, at its own length",
          arguments: [16, 100, 1_400], [-2, -1, 0, 1])
    func packetNeverExceedsLimit(packetBytes: Int, offset: Int) throws {
        let edge = line(packetBytes + offset, name: "edge")
        let lines = ["a:1|c", edge, "b:22|c", edge, edge, "c:333|ms"]
        let (packets, counters) = try process(Array(lines.joined(separator: "\n").utf8), packetBytes: packetBytes)
        #expect(counters[.linesForwarded] == UInt64(lines.count))
        for packet in packets {
            let text = String(decoding: packet, as: UTF8.self)
            if packet.count > packetBytes || !text.hasSuffix("\n") {
                // Only a line too long to fit with its newline may do this: alone, unterminated.
                #expect(packet == Array(edge.utf8), "\(packet.count) bytes: \(text.prefix(40))…")
                #expect(edge.utf8.count >= packetBytes)
            }
        }
        // Every line arrives once and in order: the lone ones end their packet without "\n".
        let received = packets.flatMap { packet -> [String] in
            let text = String(decoding: packet, as: UTF8.self)
            let parts = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
            return text.hasSuffix("\n") ? Array(parts.dropLast()) : parts
        }
        #expect(received == lines)
    }

    @Test("a line of exactly --packet-len goes out as exactly --packet-len bytes")
    func exactLengthLine() throws {
        let exact = line(1_400)
        let (packets, _) = try process(Array(exact.utf8), packetBytes: 1_400)
        #expect(packets.map(\.count) == [1_400])
        #expect(packets.first == Array(exact.utf8))
    }

    @Test("the longest line UDP over IPv4 carries (65 507 bytes) is packed whole into one 65 507-byte packet")
    func largestLineIsSendable() throws {
        let largest = line(65_507)
        let datagram = Array("a:1|c\n\(largest)\nb:2|c".utf8)
        let (packets, counters) = try process(datagram, packetBytes: 1_400)
        #expect(packets.map(\.count) == [6, 65_507, 6])
        #expect(packets[1] == Array(largest.utf8))
        #expect(counters[.linesForwarded] == 3)
        #expect(counters[.linesDroppedTooLong] == 0)
    }

    @Test("a line longer than 65 507 bytes (only an IPv6 client can send one) is dropped and counted as too_long when parsed; its neighbours go on",
          arguments: [65_508, 65_527])
    func tooLongLineIsCounted(length: Int) throws {
        let datagram = Array("a:1|c\n\(line(length))\r\nb:2|c".utf8)
        let (packets, counters) = try process(datagram, packetBytes: 1_400)
        #expect(packets.map { String(decoding: $0, as: UTF8.self) } == ["a:1|c\nb:2|c\n"])
        #expect(counters[.linesDroppedTooLong] == 1)
        #expect(counters[.linesReceived] == 3)
        #expect(counters[.linesForwarded] == 2)
    }

    @Test("the scanner's limit is the IPv4 UDP payload maximum: 65 535 - 20 (IP header) - 8 (UDP header)")
    func scannerLimit() {
        #expect(BatchAssembler.largestDatagramBytes == 65_535 - 20 - 8)
        for (length, expected) in [(65_507, true), (65_508, false)] {
            let bytes = Array(line(length).utf8)
            var offset = 0
            let scanned = LineScanner.next(in: bytes.span.bytes, from: &offset)
            #expect(scanned == (expected ? .valid(start: 0, end: length, key: 0..<3) : .malformed(.tooLong)))
        }
    }

    @Test("too_long is reported under its own name")
    func counterName() {
        #expect(RelayCounter.dropped(.tooLong).name == "statsrelay.lines_dropped.too_long")
    }
}
