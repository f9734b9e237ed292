@testable import RelayKernel
import Foundation
import Glibc
import RoutingReference
import Testing
@testable import UringRelay

/// The mirror pool's sample written from its definition (docs/operations.md#mirroring):
/// splitmix64's finaliser of the name's FNV-1a 64 XOR ASCII `mirror_s`, below `rate × 2⁶⁴`.
func referenceMirrored(_ name: String, rate: Double) -> Bool {
    guard rate < 1 else { return true }
    var z = ReferenceRouting.fnv1a64(name) ^ 0x6d69_7272_6f72_5f73
    z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
    z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
    z ^= z >> 31
    return Double(z) < rate * 18_446_744_073_709_551_616.0
}

/// Lines of many names, each name once.
func mirrorLines(_ count: Int, prefix: String) -> [String] {
    (0..<count).map { "\(prefix).svc-\($0 % 23).latency.\($0):\($0 % 1000)|ms" }
}

/// `lines` in datagrams of `perDatagram` lines.
func datagrams(_ lines: [String], perDatagram: Int) -> [String] {
    stride(from: 0, to: lines.count, by: perDatagram).map { lines[$0..<min($0 + perDatagram, lines.count)].joined(separator: "\n") }
}

@Suite("Mirror pool end to end: copies to a second pool, never at the primary's expense", .serialized, .timeLimit(.minutes(1)), .onOwnThread)
struct MirrorKernelTests {
    @Test("every line reaches its primary backend; every sampled line reaches the mirror backend an independent implementation of --mirror-hash names, byte-exact, each name in every round or in none",
          arguments: [(HashMode.jump, 1.0), (.ketama, 0.4), (.etsy, 0.7)], ioDrivers)
    func mirrorsSample(_ setting: (HashMode, Double), driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let (mode, rate) = setting
        let primaries = try (0..<2).map { _ in try TestBackend() }
        let mirrors = try (0..<3).map { _ in try TestBackend() }
        let specs = mirrors.map(\.spec)
        let base = mirrorLines(600, prefix: "mirror-\(mode)")
        let names = base.map { metricName(of: $0) }
        let mirrorRoutes = mode == .jump
            ? names.map { ReferenceRouting.primary($0, backends: 3) }
            : try independentRoutes(mode: mode, backends: specs, names: names)
        let relay = try InProcessRelay(backends: primaries, driver: driver) { configuration in
            configuration.mirror = specs.map { try! BackendAddress(parsing: $0) }
            configuration.mirrorHashMode = mode
            configuration.mirrorSample = rate
        }
        // Two rounds of the same names (other values): a name is mirrored in both or in neither.
        let rounds = [base, base.map { $0.replacingOccurrences(of: "|ms", with: "|h") }]
        let sampled = Set(names.filter { referenceMirrored($0, rate: rate) })
        if rate < 1 { #expect(sampled.count > 100 && sampled.count < names.count - 100, "a sample, not all or none") }
        for round in rounds { try send(datagrams(round, perDatagram: 7), to: relay.address) }
        let all = rounds.flatMap { $0 }
        let expectedMirrored = all.filter { sampled.contains(metricName(of: $0)) }
        let received = try collect(from: primaries + mirrors, expectedLines: all.count + expectedMirrored.count)
        let counters = relay.stop()
        for backend in 0..<2 {
            let expected = all.filter { expectedBackend(of: $0, backends: 2) == backend }
            #expect(received.lines[backend].sorted() == expected.sorted(), "primary \(backend)")
        }
        for mirror in 0..<3 {
            let expected = all.filter { line in
                sampled.contains(metricName(of: line)) && mirrorRoutes[names.firstIndex(of: metricName(of: line))!] == mirror
            }
            #expect(received.lines[2 + mirror].sorted() == expected.sorted(), "mirror \(mirror)")
        }
        #expect(counters[.linesForwarded] == UInt64(all.count))
        #expect(counters[.mirrorLines] == UInt64(expectedMirrored.count))
        #expect(counters[.mirrorLinesDroppedNoSendBuffer] == 0)
        #expect(counters[.mirrorLinesSent] + counters[.mirrorLinesUnconfirmedAtExit] == UInt64(expectedMirrored.count))
        // The primary's per-backend counters know nothing of the mirror.
        #expect(counters.countedBackends == primaries.map(\.spec))
    }

    @Test("a dead mirror (nothing listening: ICMP refusals) costs the primary nothing: every line arrives exactly once; the refusals are the mirror's",
          arguments: ioDrivers)
    func deadMirror(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let primaries = try (0..<2).map { _ in try TestBackend() }
        let deadPort = try unusedPort()
        let relay = try InProcessRelay(backends: primaries, driver: driver) { configuration in
            configuration.mirror = [try! BackendAddress(parsing: "127.0.0.1:\(deadPort)")]
        }
        var all: [String] = []
        for round in 0..<4 {
            let lines = mirrorLines(1_500, prefix: "dead-\(round)")
            all += lines
            try send(datagrams(lines, perDatagram: 5), to: relay.address)
        }
        let received = try collect(from: primaries, expectedLines: all.count, settleMilliseconds: 300)
        #expect(poll(seconds: 5) { relay.relay.liveCounters()[.mirrorLinesDroppedRefused] > 0 })
        let counters = relay.stop()
        #expect(received.totalLines == all.count, "the primary got \(received.totalLines) of \(all.count)")
        #expect(received.lines.flatMap { $0 }.sorted() == all.sorted())
        #expect(counters[.linesDroppedRefused] == 0)
        #expect(counters[.linesDroppedNoSendBuffer] == 0)
        #expect(counters[.mirrorLines] + counters[.mirrorLinesDroppedNoSendBuffer] == UInt64(all.count))
        #expect(counters[.mirrorLinesDroppedRefused] > 0)
        #expect(counters.countedBackends == primaries.map(\.spec))
    }

    @Test("a blackholed mirror (its UDP dropped without a word, in a private network namespace): the primary loses nothing; the mirror's lines count as sent, none arrive",
          arguments: ioDrivers)
    func blackholedMirror(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        struct Run: Sendable {
            var sent = 0
            var primaryLines: [String] = []
            var mirrorArrived = 0
            var mirrored: UInt64 = 0
            var mirrorSent: UInt64 = 0
            var primaryRefused: UInt64 = 0
        }
        let run = try inNetworkNamespace { loadRules in
            let primaries = try (0..<2).map { _ in try TestBackend() }
            let mirror = try TestBackend()
            try loadRules("""
                table inet statsrelay_mirror_blackhole {
                    chain silent {
                        type filter hook input priority 0;
                        udp dport \(mirror.address.port) drop
                    }
                }
                """)
            let relay = try InProcessRelay(backends: primaries, driver: driver) { configuration in
                configuration.mirror = [try! BackendAddress(parsing: mirror.spec)]
            }
            let lines = mirrorLines(3_000, prefix: "blackhole")
            try send(datagrams(lines, perDatagram: 6), to: relay.address)
            let received = try collect(from: primaries, expectedLines: lines.count, settleMilliseconds: 300)
            let counters = relay.stop()
            var run = Run(sent: lines.count, primaryLines: received.lines.flatMap { $0 })
            run.mirrorArrived = try collect(from: [mirror], expectedLines: 0, seconds: 0.3).totalLines
            run.mirrored = counters[.mirrorLines]
            run.mirrorSent = counters[.mirrorLinesSent] + counters[.mirrorLinesUnconfirmedAtExit]
            run.primaryRefused = counters[.linesDroppedRefused]
            return run
        }
        #expect(run.primaryLines.count == run.sent)
        #expect(run.primaryLines.sorted() == mirrorLines(3_000, prefix: "blackhole").sorted())
        #expect(run.primaryRefused == 0)
        #expect(run.mirrored == UInt64(run.sent))
        #expect(run.mirrorSent == run.mirrored, "what the kernel accepted counts as sent: a silent drop cannot be seen")
        #expect(run.mirrorArrived == 0)
    }

    @Test("a stop sends the mirror's open batches with the primary's: with a 30 s flush interval, every line and every copy arrives once the relay stops",
          arguments: ioDrivers)
    func stopFlushesMirror(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let primaries = try (0..<2).map { _ in try TestBackend() }
        let mirrors = try (0..<2).map { _ in try TestBackend() }
        let relay = try InProcessRelay(backends: primaries, driver: driver) { configuration in
            configuration.mirror = mirrors.map { try! BackendAddress(parsing: $0.spec) }
            configuration.flushIntervalNanoseconds = 30_000_000_000
        }
        let lines = mirrorLines(40, prefix: "at-stop")
        try send(datagrams(lines, perDatagram: 4), to: relay.address)
        // Taken in (not flushed: the batches are far from full and the interval far off) before the stop.
        #expect(poll(seconds: 5) { relay.relay.liveCounters()[.mirrorLines] == UInt64(lines.count) })
        let early = try collect(from: primaries + mirrors, expectedLines: 1, seconds: 0.2)
        #expect(early.totalLines == 0, "sent before the stop: \(early.lines)")
        let counters = relay.stop()
        let received = try collect(from: primaries + mirrors, expectedLines: 2 * lines.count, seconds: 5)
        #expect(received.lines[0...1].flatMap { $0 }.sorted() == lines.sorted())
        #expect(received.lines[2...3].flatMap { $0 }.sorted() == lines.sorted())
        #expect(counters[.mirrorLinesDroppedUnsentAtExit] == 0)
        #expect(counters[.linesDroppedUnsentAtExit] == 0)
    }

    @Test("mirror options: a bad value exits 64 naming the option", arguments: [
        (["--mirror-sample", "0"], "--mirror-sample"),
        (["--mirror-sample", "-0.5"], "--mirror-sample"),
        (["--mirror-hash", "crc32"], "--mirror-hash"),
        (["--mirror", "not-an-address"], "--mirror"),
        (["--mirror", "127.0.0.1:9,127.0.0.1:9"], "--mirror"),
    ])
    func optionErrors(_ arguments: [String], _ flag: String) throws {
        let result = try RelayProcess.run(arguments + ["127.0.0.1:9"])
        #expect(result.status == 64)
        #expect(result.error.contains(flag), "stderr: \(result.error)")
    }
}
