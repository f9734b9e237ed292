import CLiburing
import RelayKernel
import Testing
@testable import UringRelay

/// A packet of StatsD lines for these tests: `lines` lines starting `name.0:1|c`, so packets
/// differ from their first bytes on, and the line count says which packet a count came from.
struct TestPacket {
    let bytes: [UInt8]
    let lines: Int

    init(_ name: String, lines: Int, padTo length: Int = 0) {
        var text = (0..<lines).map { "\(name).\($0):1|c\n" }.joined()
        if text.utf8.count < length { text += String(repeating: "x", count: length - text.utf8.count) }
        bytes = Array(text.utf8)
        self.lines = lines
    }

    var fingerprint: PacketFingerprint { PacketFingerprint(bytes.span.bytes) }

    /// The fingerprint of an ICMP error's quote of this packet: its first `length` bytes, as
    /// a Linux host quotes 520 of them over IPv4.
    func quote(_ length: Int = 520) -> PacketFingerprint { PacketFingerprint(Array(bytes.prefix(length)).span.bytes) }

    func refusal(_ length: Int = 520) -> SocketError { SocketError(.refused, quote: quote(length)) }
}

@Suite("Packet fingerprints: a quote matches the packet it is a prefix of")
struct PacketFingerprintTests {
    static let long = TestPacket("fingerprint.long", lines: 60, padTo: 1_400)
    static let short = TestPacket("fingerprint.short", lines: 3)

    /// (what, packet, quote bytes, whether the quote is of the packet by the documented rules).
    static let cases: [(String, [UInt8], [UInt8], Bool)] = [
        ("a short packet quoted whole", short.bytes, short.bytes, true),
        ("a long packet's first 520 bytes (Linux over IPv4)", long.bytes, Array(long.bytes.prefix(520)), true),
        ("a long packet quoted whole", long.bytes, long.bytes, true),
        ("the first 512 bytes exactly", long.bytes, Array(long.bytes.prefix(512)), true),
        ("a quote that differs at byte 300", long.bytes, changed(Array(long.bytes.prefix(520)), at: 300), false),
        ("a quote that differs at byte 0", short.bytes, changed(short.bytes, at: 0), false),
        ("a quote one byte longer than the packet", short.bytes, short.bytes + [0x0A], false),
        ("another packet's quote of the same length", short.bytes, TestPacket("fingerprint.other", lines: 3).bytes, false),
        ("an empty quote (a router that quotes the UDP header only) matches any packet", long.bytes, [], true),
        ("a 5-byte quote with the same first bytes", long.bytes, Array(long.bytes.prefix(5)), true),
        ("a 5-byte quote with other first bytes", long.bytes, Array("other".utf8), false),
        // The documented limits: a partial quote shorter than 512 bytes of a longer packet is
        // compared on its first 8 bytes, and bytes past 512 are not compared at all.
        ("a 100-byte quote, same first 8 bytes, different after (compared on 8 bytes only)",
         long.bytes, Array(long.bytes.prefix(8)) + Array(repeating: 0x41, count: 92), true),
        ("a 600-byte quote that differs at byte 550 (past the hashed 512)", long.bytes, changed(Array(long.bytes.prefix(600)), at: 550), true),
    ]

    static func changed(_ bytes: [UInt8], at offset: Int) -> [UInt8] {
        var copy = bytes
        copy[offset] ^= 0x20
        return copy
    }

    @Test("couldBeQuoted(by:)", arguments: cases)
    func matching(what: String, packet: [UInt8], quote: [UInt8], expected: Bool) {
        let print = PacketFingerprint(packet.span.bytes)
        #expect(print.couldBeQuoted(by: PacketFingerprint(quote.span.bytes)) == expected, "\(what)")
    }

    @Test("the fingerprint keeps the length and the first 8 bytes as they are")
    func lengthAndHead() {
        let print = PacketFingerprint(Array("abcdefghij".utf8).span.bytes)
        #expect(print.length == 10)
        #expect(print.head == 0x6867_6665_6463_6261)  // "abcdefgh", little-endian
        #expect(PacketFingerprint(Array("ab".utf8).span.bytes).head == 0x6261)
    }
}

/// Whether this process's fingerprints hash by the CPU's CRC-32C instruction (else by the
/// multiply-rotate mix).
private let fingerprintsUseCRC = cl_fingerprint_uses_instruction() != 0

/// The fingerprint's hash as its documentation defines it, over the first 512 bytes as 8-byte
/// little-endian words (the last zero-padded) from `seed = length * K`, then MurmurHash3's
/// `fmix64`: the CRC-32C lanes (`referenceLanes`) where the CPU has the instruction, else the
/// multiply-rotate mix (`referenceMixed`).
private func referenceFingerprintHash(_ bytes: [UInt8]) -> UInt64 {
    let hashed = Array(bytes.prefix(PacketFingerprint.hashedBytes))
    let seed = UInt64(hashed.count) &* 0x9E37_79B9_7F4A_7C15
    var state = fingerprintsUseCRC ? referenceLanes(hashed, seed: seed) : referenceMixed(hashed, seed: seed)
    state ^= state >> 33
    state &*= 0xFF51_AFD7_ED55_8CCD
    state ^= state >> 33
    state &*= 0xC4CE_B9FE_1A85_EC53
    state ^= state >> 33
    return state
}

/// `bytes` as 8-byte little-endian words, the last zero-padded.
private func littleEndianWords(_ bytes: [UInt8]) -> [UInt64] {
    stride(from: 0, to: bytes.count, by: 8).map { start in
        var word: UInt64 = 0
        for (shift, byte) in bytes[start..<min(start + 8, bytes.count)].enumerated() {
            word |= UInt64(byte) << (8 * UInt64(shift))
        }
        return word
    }
}

/// The multiply-rotate mix, a word at a time: `state = rotl((state ^ word) * K, 29)`.
private func referenceMixed(_ bytes: [UInt8], seed: UInt64) -> UInt64 {
    littleEndianWords(bytes).reduce(seed) { state, word in
        let mixed = (state ^ word) &* 0x9E37_79B9_7F4A_7C15
        return (mixed << 29) | (mixed >> 35)
    }
}

/// The two CRC-32C lanes, one bit at a time: even-indexed words into lane A, odd ones into
/// lane B (Castagnoli, reflected, no inversions: SSE4.2's `crc32q`), A seeded with the low 32
/// bits of `seed`, B with the high 32; `B << 32 | A`.
private func referenceLanes(_ bytes: [UInt8], seed: UInt64) -> UInt64 {
    var lanes: [UInt32] = [UInt32(truncatingIfNeeded: seed), UInt32(truncatingIfNeeded: seed >> 32)]
    for (index, word) in littleEndianWords(bytes).enumerated() {
        var crc = lanes[index % 2]
        for bit in 0..<64 {
            let low = (crc ^ UInt32(truncatingIfNeeded: word >> UInt64(bit))) & 1
            crc = (crc >> 1) ^ (low == 1 ? 0x82F6_3B78 : 0)
        }
        lanes[index % 2] = crc
    }
    return UInt64(lanes[1]) << 32 | UInt64(lanes[0])
}

@Suite("Packet fingerprint hash: the documented definition at every length")
struct PacketFingerprintHashTests {
    @Test("every length from 0 to 530 bytes (odd and even word counts, every tail) hashes as defined, and 1 400 as its first 512")
    func hashMatchesDefinition() {
        var generator = SystemRandomNumberGenerator()
        let bytes = (0..<1_400).map { _ in UInt8.random(in: 0...255, using: &generator) }
        for length in Array(0...530) + [1_400] {
            let packet = Array(bytes.prefix(length))
            #expect(PacketFingerprint(packet.span.bytes).hash == referenceFingerprintHash(packet), "length \(length)")
        }
    }

    @Test("the CRC-32C instruction's lanes equal the bitwise definition at every length from 0 to 530 bytes",
          .enabled(if: fingerprintsUseCRC, "this CPU has no CRC-32C instruction: fingerprints use the mix"))
    func instructionMatchesDefinition() {
        everyPrefix { bytes, buffer, seed, length in
            let lanes = cl_fingerprint_lanes(seed, buffer.baseAddress, length)
            #expect(lanes == cl_fingerprint_lanes_reference(seed, buffer.baseAddress, length), "length \(length)")
            #expect(lanes == referenceLanes(Array(bytes.prefix(length)), seed: seed), "length \(length)")
        }
    }

    @Test("the mix a CPU without the instruction hashes by equals its definition at every length from 0 to 530 bytes")
    func mixMatchesDefinition() {
        everyPrefix { bytes, buffer, seed, length in
            #expect(cl_fingerprint_mixed(seed, buffer.baseAddress, length) == referenceMixed(Array(bytes.prefix(length)), seed: seed), "length \(length)")
        }
    }

    /// Calls `check` with 530 random bytes, a random seed and every length from 0 to 530.
    private func everyPrefix(_ check: ([UInt8], UnsafeBufferPointer<UInt8>, UInt64, Int) -> Void) {
        var generator = SystemRandomNumberGenerator()
        let bytes = (0..<530).map { _ in UInt8.random(in: 0...255, using: &generator) }
        let seed = UInt64.random(in: 0...UInt64.max, using: &generator)
        bytes.withUnsafeBufferPointer { buffer in
            for length in 0...530 { check(bytes, buffer, seed, length) }
        }
    }
}

@Suite("Delivery ledger: each error goes to the packet it quotes (issue 12, defect 4)")
struct ErrorQueueMatchTests {
    static let delay: UInt64 = 200_000_000

    /// A ledger with a 200 ms delay and no doubt window (these cases are about attribution;
    /// doubt has its own suite), the given packets accepted at 0 ms.
    static func ledger(accepting packets: [TestPacket], doubtWindow: UInt64 = 0) -> DeliveryLedger {
        var ledger = DeliveryLedger(confirmationDelay: delay, doubtWindow: doubtWindow)
        for packet in packets {
            ledger.accepted(lines: packet.lines, bytes: packet.bytes.count, fingerprint: packet.fingerprint, now: 0)
        }
        return ledger
    }

    static let packets = [
        TestPacket("match.a", lines: 1, padTo: 1_400), TestPacket("match.b", lines: 2, padTo: 1_400),
        TestPacket("match.c", lines: 4, padTo: 1_400), TestPacket("match.d", lines: 8, padTo: 100),
        TestPacket("match.e", lines: 16),
    ]

    @Test("a refusal is charged to the packet it quotes, not to the oldest one", arguments: 0..<5)
    func chargedToTheQuotedPacket(refused index: Int) {
        var ledger = Self.ledger(accepting: Self.packets)
        ledger.drained([Self.packets[index].refusal()], now: 1_000_000)
        ledger.drained([], now: Self.delay + 1_000_000)
        #expect(ledger.refused == DeliveryLedger.Counts(packets: 1, lines: UInt64(Self.packets[index].lines), bytes: UInt64(Self.packets[index].bytes.count)))
        #expect(ledger.sent.lines == UInt64(31 - Self.packets[index].lines))
        #expect(ledger.unattributedLosses == 0 && ledger.unconfirmed.packets == 0)
    }

    @Test("several refusals in one drain, in any order, each to its own packet")
    func severalInOneDrain() {
        var ledger = Self.ledger(accepting: Self.packets)
        ledger.drained([Self.packets[4].refusal(), Self.packets[1].refusal(), SocketError(.unreachable, quote: Self.packets[3].quote())], now: 1_000)
        #expect(ledger.refused.lines == 18)
        #expect(ledger.unreachable.lines == 8)
        ledger.drained([], now: Self.delay)
        #expect(ledger.sent.lines == 5)
    }

    @Test("equal packets: the oldest takes the refusal")
    func equalPacketsOldestFirst() {
        let same = TestPacket("match.same", lines: 3, padTo: 1_400)
        var ledger = DeliveryLedger(confirmationDelay: Self.delay, doubtWindow: 0)
        ledger.accepted(lines: 3, bytes: same.bytes.count, fingerprint: same.fingerprint, now: 0)
        ledger.accepted(lines: 3, bytes: same.bytes.count, fingerprint: same.fingerprint, now: 10_000_000)
        ledger.drained([same.refusal()], now: 20_000_000)
        // Only the first packet (accepted at 0) is old enough to confirm at 200 ms: if the
        // second had taken the refusal, the first would be sent now.
        ledger.drained([], now: Self.delay)
        #expect(ledger.sent.packets == 0 && ledger.refused.packets == 1 && ledger.unconfirmed.packets == 1)
    }

    @Test("a local firewall's reject: the failed send's ICMP echo is recognised, not charged to a packet that arrived")
    func echoOfAFailedSend() {
        let arrived = TestPacket("echo.arrived", lines: 5, padTo: 1_400)
        let rejected = TestPacket("echo.rejected", lines: 7, padTo: 1_400)
        var ledger = DeliveryLedger(confirmationDelay: Self.delay, doubtWindow: 0)
        ledger.accepted(lines: 5, bytes: arrived.bytes.count, fingerprint: arrived.fingerprint, now: 0)
        ledger.sendFailed(lines: 7, bytes: rejected.bytes.count, fingerprint: rejected.fingerprint, now: 0)
        ledger.drained([rejected.refusal()], now: 1_000)
        ledger.drained([], now: Self.delay)
        #expect(ledger.sent.lines == 5, "the packet that arrived is sent")
        #expect(ledger.sendErrors.lines == 7 && ledger.refused.packets == 0, "the rejected one is counted once, as a failed send")
        #expect(ledger.echoesOfFailedSends == 1 && ledger.unattributedLosses == 0)
    }

    @Test("a whole quote of a small failed packet is its echo, not the start of a larger packet that begins alike")
    func exactMatchBeforeHeadMatch() {
        // The first packet of a burst, flushed small by the timer, rejected by a local firewall;
        // the next, full-sized, arrived. Both begin with the same metric prefix.
        let small = TestPacket("burst.metric", lines: 5)
        let large = TestPacket("burst.metric", lines: 60, padTo: 1_400)
        #expect(large.fingerprint.match(by: small.quote()) == .head)
        #expect(small.fingerprint.match(by: small.quote()) == .hashed)
        var ledger = DeliveryLedger(confirmationDelay: Self.delay, doubtWindow: 0)
        ledger.sendFailed(lines: 5, bytes: small.bytes.count, fingerprint: small.fingerprint, now: 0)
        ledger.accepted(lines: 60, bytes: large.bytes.count, fingerprint: large.fingerprint, now: 0)
        ledger.drained([small.refusal()], now: 1_000)
        ledger.drained([], now: Self.delay)
        #expect(ledger.echoesOfFailedSends == 1 && ledger.refused.packets == 0 && ledger.sent.lines == 60)
        // With no exact match anywhere, a short quote still finds the packet that begins with it
        // (a router that quotes only the first bytes).
        var other = DeliveryLedger(confirmationDelay: Self.delay, doubtWindow: 0)
        other.accepted(lines: 60, bytes: large.bytes.count, fingerprint: large.fingerprint, now: 0)
        other.drained([large.refusal(100)], now: 1_000)
        #expect(other.refused.lines == 60)
    }

    @Test("an echo is taken once per failed send; a second one, or one after two more drains and the confirmation delay, is unattributed")
    func echoesAreBounded() {
        let rejected = TestPacket("echo.once", lines: 1, padTo: 700)
        var ledger = DeliveryLedger(confirmationDelay: Self.delay)
        ledger.sendFailed(lines: 1, bytes: rejected.bytes.count, fingerprint: rejected.fingerprint, now: 0)
        ledger.drained([rejected.refusal(), rejected.refusal()], now: 1_000)
        #expect(ledger.echoesOfFailedSends == 1 && ledger.unattributedLosses == 1)
        ledger.sendFailed(lines: 1, bytes: rejected.bytes.count, fingerprint: rejected.fingerprint, now: 1_000_000_000)
        ledger.drained([], now: 1_000_000_000 + Self.delay + 1)
        // One complete drain since the failure: an echo read now, however late, is still its
        // own (a long turn may separate a failure from the next drain).
        ledger.drained([rejected.refusal()], now: 1_000_000_000 + Self.delay + 2)
        #expect(ledger.echoesOfFailedSends == 2 && ledger.unattributedLosses == 1)
        ledger.sendFailed(lines: 1, bytes: rejected.bytes.count, fingerprint: rejected.fingerprint, now: 2_000_000_000)
        ledger.drained([], now: 2_000_000_000 + 1)
        ledger.drained([], now: 2_000_000_000 + 2)
        ledger.drained([rejected.refusal()], now: 2_000_000_000 + Self.delay + 1)
        #expect(ledger.echoesOfFailedSends == 2 && ledger.unattributedLosses == 2)
    }

    @Test("the echoes of a burst of failed sends larger than one drain interval are all recognised")
    func manyEchoes() {
        var ledger = DeliveryLedger(confirmationDelay: Self.delay)
        let rejected = (0..<300).map { TestPacket("echo.burst.\($0)", lines: 1, padTo: 600) }
        for packet in rejected { ledger.sendFailed(lines: 1, bytes: packet.bytes.count, fingerprint: packet.fingerprint, now: 5) }
        ledger.drained(rejected.reversed().map { $0.refusal() }, now: 10)
        #expect(ledger.echoesOfFailedSends == 300 && ledger.unattributedLosses == 0)
    }

    @Test("failed sends stay oldest first when their ring wraps and grows: an echo marks the oldest identical one, a later echo the younger")
    func failedSendsKeepTheirOrderAcrossGrowth() {
        // Delay 1 000 ns: a failed send may be echoed until two more complete drains and 1 000 ns
        // have passed.
        var ledger = DeliveryLedger(confirmationDelay: 1_000, doubtWindow: 0)
        // Fifteen failures, all echoed, leave the ring's (16 slots) next entry in its last slot.
        let echoedFirst = (0..<15).map { TestPacket("wrap.first.\($0)", lines: 1, padTo: 600) }
        for packet in echoedFirst { ledger.sendFailed(lines: 1, bytes: 600, fingerprint: packet.fingerprint, now: 0) }
        ledger.drained(echoedFirst.map { $0.refusal() }, now: 1)
        #expect(ledger.echoesOfFailedSends == 15)
        // The older of two identical failed packets goes in the last slot, the younger (two
        // complete drains later) in the first after the wrap; then fillers until the ring is
        // full, and one more, which grows it.
        let repeated = TestPacket("wrap.repeated", lines: 1, padTo: 600)
        ledger.sendFailed(lines: 1, bytes: 600, fingerprint: repeated.fingerprint, now: 2)
        ledger.drained([], now: 3)
        ledger.drained([], now: 4)
        ledger.sendFailed(lines: 1, bytes: 600, fingerprint: repeated.fingerprint, now: 5)
        let fillers = (0..<15).map { TestPacket("wrap.filler.\($0)", lines: 1, padTo: 600) }
        for packet in fillers { ledger.sendFailed(lines: 1, bytes: 600, fingerprint: packet.fingerprint, now: 5) }
        // One echo: it is the older one's (the oldest that matches).
        ledger.drained([repeated.refusal()], now: 6)
        #expect(ledger.echoesOfFailedSends == 16 && ledger.unattributedLosses == 0)
        // Past the older one's time, within the younger's: a second echo is the younger one's.
        // Had the growth put the younger first, the first echo would have marked it, and this
        // one would find only the older, too old to echo: an unattributed loss.
        ledger.drained([repeated.refusal()], now: 1_003)
        #expect(ledger.echoesOfFailedSends == 17 && ledger.unattributedLosses == 0)
        // Every filler is still remembered after the growth.
        ledger.drained(fillers.map { $0.refusal() }, now: 1_004)
        #expect(ledger.echoesOfFailedSends == 32 && ledger.unattributedLosses == 0)
    }

    @Test("a refusal for a packet already counted as sent, or for no packet at all, is unattributed and takes nothing from sent")
    func lateRefusal() {
        var ledger = Self.ledger(accepting: Array(Self.packets.prefix(2)))
        ledger.drained([], now: Self.delay)
        #expect(ledger.sent.lines == 3)
        ledger.drained([Self.packets[0].refusal(), Self.packets[4].refusal()], now: Self.delay + 1)
        #expect(ledger.sent.lines == 3 && ledger.refused.packets == 0 && ledger.unattributedLosses == 2)
    }

    @Test("errors of local origin are no further loss")
    func localErrorsIgnored() {
        var ledger = Self.ledger(accepting: [Self.packets[0]])
        ledger.drained([SocketError(.local, quote: Self.packets[0].quote())], now: Self.delay)
        #expect(ledger.sent.lines == 1 && ledger.unattributedLosses == 0)
    }

    @Test("a drain that stopped at its limit confirms nothing: a refusal may still be queued")
    func incompleteDrainConfirmsNothing() {
        var ledger = Self.ledger(accepting: Self.packets)
        ledger.beginDrain(now: Self.delay)
        ledger.take(Self.packets[2].refusal())
        ledger.endDrain(now: Self.delay, complete: false)
        #expect(ledger.sent.packets == 0 && ledger.refused.lines == 4 && ledger.unconfirmed.packets == 4)
        #expect(ledger.needsDrain(now: Self.delay))
        ledger.drained([Self.packets[0].refusal()], now: Self.delay)
        #expect(ledger.sent.lines == 26 && ledger.refused.lines == 5)
    }

    @Test("the hash index finds the quoted packet across growth and wrap-around", arguments: [63, 64, 65, 700])
    func indexAcrossGrowth(batch: Int) {
        var ledger = DeliveryLedger(confirmationDelay: 1_000, doubtWindow: 0)
        var expectedRefused: UInt64 = 0
        var expectedSent: UInt64 = 0
        var next = 1
        for round in 0..<6 {
            var packets: [(packet: TestPacket, lines: Int)] = []
            for _ in 0..<batch {
                // Packet n counts n lines: the refused line total names exactly which were taken.
                packets.append((TestPacket("grow.\(next)", lines: 1, padTo: 600), next))
                ledger.accepted(lines: next, bytes: 600, fingerprint: packets.last!.packet.fingerprint, now: UInt64(round) * 10)
                next += 1
            }
            // Refuse every third packet of this round, newest first, then confirm the rest.
            let refusedHere = stride(from: packets.count - 1, through: 0, by: -3).map { packets[$0] }
            let roundLines = packets.reduce(0) { $0 + UInt64($1.lines) }
            let refusedLines = refusedHere.reduce(0) { $0 + UInt64($1.lines) }
            expectedRefused += refusedLines
            expectedSent += roundLines - refusedLines
            ledger.drained(refusedHere.map { $0.packet.refusal() }, now: UInt64(round) * 10 + 1)
            if round % 2 == 1 { ledger.drained([], now: UInt64(round) * 10 + 1_000) }
        }
        ledger.drained([], now: 1_000_000)
        #expect(ledger.refused.lines == expectedRefused)
        #expect(ledger.sent.lines == expectedSent)
        #expect(ledger.unattributedLosses == 0 && ledger.unconfirmed == DeliveryLedger.Counts())
        #expect(ledger.verifyInvariants())
    }

    @Test("short packets (under the hashed length) are matched by a scan, whole quote against whole packet")
    func shortPacketsScanned() {
        let small = (0..<40).map { TestPacket("small.\($0)", lines: $0 + 1) }
        var ledger = Self.ledger(accepting: small)
        ledger.drained([small[37].refusal(), small[2].refusal()], now: 1)
        ledger.drained([], now: Self.delay)
        #expect(ledger.refused.lines == 38 + 3)
        #expect(ledger.sent.packets == 38)
    }
}

@Suite("Delivery ledger: doubt only what a rate-limiting host may have hidden")
struct DoubtEpisodeTests {
    static let delay: UInt64 = 200_000_000
    static let second: UInt64 = 1_000_000_000

    /// Packets at `every` ms from 0 to `until` ms; the ones at `refusedAt` ms are refused in
    /// a drain at once; drains every 50 ms; returns the ledger after a final drain at 10 s.
    static func run(every: UInt64, until: UInt64, refusedAt: Set<UInt64>) -> DeliveryLedger {
        var ledger = DeliveryLedger(confirmationDelay: delay)
        var time: UInt64 = 0
        while time <= until {
            let packet = TestPacket("doubt.\(time)", lines: 1, padTo: 600)
            ledger.accepted(lines: 1, bytes: packet.bytes.count, fingerprint: packet.fingerprint, now: time * 1_000_000)
            ledger.drained(refusedAt.contains(time) ? [packet.refusal()] : [], now: time * 1_000_000 + 1)
            time += every
        }
        ledger.drained([], now: 10 * second)
        return ledger
    }

    @Test("a dead remote backend (one refusal a second, the rest silent): unrefused packets are doubted, not sent")
    func rateLimitedHostIsDoubted() {
        let ledger = Self.run(every: 10, until: 3_000, refusedAt: [0, 990, 1_980, 2_970])
        #expect(ledger.refused.packets == 4)
        #expect(ledger.sent.packets == 0, "nothing sent to a host that may be hiding refusals is counted as sent")
        #expect(ledger.doubted.packets == 297)
    }

    @Test("a host refusing one packet in 20, more often than a rate limit allows: every refusal is reported, the rest are sent")
    func frequentRefusalsAreNotDoubted() {
        let refused = Set(stride(from: UInt64(0), through: 990, by: 20))
        let ledger = Self.run(every: 1, until: 999, refusedAt: refused)
        #expect(ledger.refused.packets == 50)
        #expect(ledger.sent.packets == 950)
        #expect(ledger.doubted.packets == 0)
    }

    @Test("a burst's first few refusals do not doom the packets around them: they are decided a window later")
    func decisionWaitsForTheEpisode() {
        // 3 refusals in the first 30 ms, then 10 more at 500 ms: 13 in half a second, more than
        // a rate-limiting host sends (6 + 1 a second), so nothing was hidden.
        let refused: Set<UInt64> = [0, 10, 20, 500, 510, 520, 530, 540, 550, 560, 570, 580, 590]
        let ledger = Self.run(every: 10, until: 600, refusedAt: refused)
        #expect(ledger.refused.packets == 13)
        #expect(ledger.sent.packets == 61 - 13)
        #expect(ledger.doubted.packets == 0)
    }

    @Test("outside an episode (a window after the last error), packets are sent again")
    func episodeEnds() {
        let ledger = Self.run(every: 100, until: 3_000, refusedAt: [500])
        #expect(ledger.refused.packets == 1)
        // Doubted: what was unconfirmed at the error (accepted from 300 ms, the delay before)
        // and what came within a second after it: 300, 400, 600, … 1 500 (12 packets).
        #expect(ledger.doubted.packets == 12)
        #expect(ledger.sent.packets == 31 - 1 - 12)
    }
}
