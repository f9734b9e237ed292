import Foundation
import RoutingReference
import Testing
@testable import UringRelay

/// `--mirror` with `--metrics-prefix`/`--metrics-tags`: the mirror gets each sampled line as
/// rewritten (the bytes the primary gets, written out here by hand), sampled and routed by the
/// rewritten key (`referenceMirrored`, `ReferenceRouting`, the independent ring script), packed
/// to `--packet-len` at the rewritten lengths.
@Suite("Mirror of rewritten lines", .serialized, .timeLimit(.minutes(1)), .onOwnThread)
struct MirrorRewriteKernelTests {
    /// Lines of every form with their rewritten bytes and keys (`RewriteRelayTests.lines`),
    /// and many metric names with tags, so a sample takes some and leaves some.
    static let lines: [(line: String, rewritten: String, name: String, nameAndTags: String)] =
        RewriteRelayTests.lines + (0..<300).map {
            ("mr.svc\($0 % 17).n\($0):\($0)|ms|#env:p,az:\($0 % 3)", "eu.mr.svc\($0 % 17).n\($0):\($0)|ms|#env:p,az:\($0 % 3),dc:x",
             "eu.mr.svc\($0 % 17).n\($0)", "eu.mr.svc\($0 % 17).n\($0)|#az:\($0 % 3),env:p")
        }

    @Test("each sampled line reaches the mirror backend of its rewritten key byte-exact as rewritten; the primary gets every line as before",
          arguments: ioDrivers, [(HashMode.jump, 1.0, HashKeyMode.name), (.ketama, 0.5, .nameAndTags), (.etsy, 0.6, .name)])
    func mirroredAsRewritten(driver: IOBackendChoice, setting: (HashMode, Double, HashKeyMode)) throws {
        try requireDriver(driver)
        let (mode, rate, hashKey) = setting
        let primaries = try (0..<2).map { _ in try TestBackend() }
        let mirrors = try (0..<3).map { _ in try TestBackend() }
        let keys = Self.lines.map { hashKey == .name ? $0.name : $0.nameAndTags }
        let mirrorRoutes = mode == .jump
            ? keys.map { ReferenceRouting.primary($0, backends: mirrors.count) }
            : try independentRoutes(mode: mode, backends: mirrors.map(\.spec), names: keys)
        let sampled = keys.map { referenceMirrored($0, rate: rate) }
        if rate < 1 { #expect(sampled.count { $0 } > 60 && sampled.count { !$0 } > 60, "a sample, not all or none") }
        let relay = try InProcessRelay(backends: primaries, driver: driver) { configuration in
            configuration.hashKey = hashKey
            configuration.rewrite = try! LineRewrite(prefix: "eu", tags: "dc:x")
            configuration.mirror = mirrors.map { try! BackendAddress(parsing: $0.spec) }
            configuration.mirrorHashMode = mode
            configuration.mirrorSample = rate
        }
        try send(datagrams(Self.lines.map(\.line), perDatagram: 6), to: relay.address)
        let mirroredCount = sampled.count { $0 }
        let received = try collect(from: primaries + mirrors, expectedLines: Self.lines.count + mirroredCount)
        let counters = relay.stop()
        for backend in primaries.indices {
            let expected = Self.lines.indices.filter { ReferenceRouting.primary(keys[$0], backends: primaries.count) == backend }
            #expect(received.lines[backend].sorted() == expected.map { Self.lines[$0].rewritten }.sorted(), "primary \(backend)")
        }
        for mirror in mirrors.indices {
            let expected = Self.lines.indices.filter { sampled[$0] && mirrorRoutes[$0] == mirror }
            #expect(received.lines[primaries.count + mirror].sorted() == expected.map { Self.lines[$0].rewritten }.sorted(), "mirror \(mirror)")
        }
        #expect(counters[.linesForwarded] == UInt64(Self.lines.count))
        #expect(counters[.mirrorLines] == UInt64(mirroredCount))
        #expect(counters[.mirrorLinesDroppedNoSendBuffer] == 0)
        #expect(counters[.mirrorLinesSent] + counters[.mirrorLinesUnconfirmedAtExit] == UInt64(mirroredCount))
    }

    @Test("the mirror's packets keep to --packet-len at the rewritten lengths, as the primary's; a line rewritten past 65 507 bytes is counted once and goes to neither",
          arguments: ioDrivers)
    func packetLength(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let primary = try TestBackend()
        let mirror = try TestBackend()
        let relay = try InProcessRelay(backends: [primary], driver: driver) { configuration in
            // 128, not RewriteRelayTests' 64: with 64 the primary's and the mirror's send slots
            // together (RingSizing) pass the 65 536 CQEs io_uring allows.
            configuration.packetBytes = 128
            configuration.maxDatagramBytes = 65_535
            configuration.flushIntervalNanoseconds = 1_000_000
            configuration.rewrite = try! LineRewrite(prefix: "p", tags: "t")
            configuration.mirror = [try! BackendAddress(parsing: mirror.spec)]
        }
        // Each 58-byte line becomes 63 bytes ("p." and "|#t"), 64 with its newline: two fill a
        // 128-byte packet exactly. The 59-byte ones (65 with the newline) go one to a packet.
        let exact = (0..<10).map { "fill.\($0):" + String(repeating: "1", count: 58 - 9) + "|c" }
        let over = (0..<4).map { "over.\($0):" + String(repeating: "1", count: 59 - 9) + "|c" }
        // 65 505 bytes with its 5 bytes of rewrite: a line UDP over IPv4 cannot carry.
        let huge = "huge:" + String(repeating: "9", count: 65_505 - 5 - 2) + "|c"
        try send([exact.joined(separator: "\n"), over.joined(separator: "\n"), huge], to: relay.address)
        let received = try collect(from: [primary, mirror], expectedLines: 2 * (exact.count + over.count), seconds: 10)
        let counters = relay.stop()
        let expectedLines = (exact + over).map { "p." + $0 + "|#t" }.sorted()
        for (index, side) in ["primary", "mirror"].enumerated() {
            let packets = received.datagrams[index]
            #expect(packets.allSatisfy { $0.utf8.count <= 128 }, "\(side): \(packets.map(\.utf8.count))")
            #expect(packets.filter { $0.hasPrefix("p.fill") }.map(\.utf8.count) == Array(repeating: 128, count: 5), "\(side)")
            #expect(packets.filter { $0.hasPrefix("p.over") }.map(\.utf8.count) == Array(repeating: 65, count: 4), "\(side)")
            #expect(received.lines[index].sorted() == expectedLines, "\(side)")
        }
        #expect(counters[.linesDroppedTooLongRewritten] == 1)
        #expect(counters[.linesForwarded] == UInt64(exact.count + over.count))
        #expect(counters[.mirrorLines] == UInt64(exact.count + over.count))
        #expect(counters[.mirrorLinesDroppedNoSendBuffer] == 0)
    }
}
