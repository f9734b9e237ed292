import Foundation
import Glibc
@testable import RelayKernel
import Synchronization
import Testing
@testable import UringRelay

/// One kind of junk line and the reason the relay must count it under, written from the
/// protocol's rules (docs/operations.md#counters), not read from the relay.
private struct Junk {
    let bytes: [UInt8]
    /// `nil`: only empty lines (counted in `lines_empty`, not dropped).
    let reason: LineScanner.Malformation?
    /// How many lines it is.
    let lines: Int
}

/// Junk any relay mode drops: malformed lines, NULs, lines of only `\n`, binary.
private let looseJunk: [Junk] = [
    Junk(bytes: Array("junk without a colon\n".utf8), reason: .missingColon, lines: 1),
    Junk(bytes: Array(":1|c\n".utf8), reason: .emptyName, lines: 1),
    Junk(bytes: Array("nul".utf8) + [0] + Array("inside:1|c\n".utf8), reason: .nulByte, lines: 1),
    Junk(bytes: [0, 0, 0, 0, 10], reason: .nulByte, lines: 1),
    Junk(bytes: Array("\n\n\n\n".utf8), reason: nil, lines: 4),
    Junk(bytes: Array("_e{x,1}:t|x\n".utf8), reason: .badEventHeader, lines: 1),
    // Binary: every byte from 0x80 to 0xFF (no `:`, `\r`, `\n` or NUL among them).
    Junk(bytes: Array(0x80...0xFF) + [10], reason: .missingColon, lines: 1),
]

/// Lines that look like StatsD but `--validate strict` drops, each for its reason.
private let strictJunk: [Junk] = [
    Junk(bytes: Array("bad.type:1|x\n".utf8), reason: .badType, lines: 1),
    Junk(bytes: Array("bad.type.none:1\n".utf8), reason: .badType, lines: 1),
    Junk(bytes: Array("bad.value:abc|c\n".utf8), reason: .badValue, lines: 1),
    Junk(bytes: Array("bad.rate:1|c|@fast\n".utf8), reason: .badSampleRate, lines: 1),
    Junk(bytes: Array("bad|name:1|c\n".utf8), reason: .badName, lines: 1),
    Junk(bytes: Array("bad.timestamp:1|c|Tabc\n".utf8), reason: .badTimestamp, lines: 1),
    Junk(bytes: Array("bad.overflow:1e400|g\n".utf8), reason: .badValue, lines: 1),
    Junk(bytes: Array("_sc|bad.check|7\n".utf8), reason: .badServiceCheck, lines: 1),
]

/// A TCP client flooding junk beside a steady one (issue 14/15): the steady client's lines all
/// arrive exactly once, unaltered and in order; the junk is counted by reason, exactly; an
/// over-long line closes only the junk client's connection; the relay keeps relaying.
@Suite("TCP junk flood beside a steady client", .serialized, .timeLimit(.minutes(1)), .onOwnThread)
struct TCPJunkFloodTests {
    /// Junk connections, one after another; each sends `blocks` copies of the junk and then a
    /// line longer than `--max-datagram`, which closes it.
    static let junkConnections = 12
    static let blocks = 60
    /// Lines the steady client sends, in writes of `steadyChunk` lines.
    static let steadyLines = 3_000
    static let steadyChunk = 25
    static let maxDatagram = 512

    @Test("junk (malformed lines, NULs, empty lines, binary, over-long runs) floods one connection while a steady client sends: every steady line arrives once, unaltered, in order; junk counted exactly by reason; each over-long line closes only its own connection", arguments: ioDrivers)
    func looseFlood(driver: IOBackendChoice) throws {
        try flood(driver: driver, validation: .loose, junk: looseJunk)
    }

    @Test("--validate strict: valid-looking but invalid lines flooded beside a steady client are each counted under their reason; the steady client loses nothing", arguments: ioDrivers)
    func strictFlood(driver: IOBackendChoice) throws {
        try flood(driver: driver, validation: .strict, junk: looseJunk + strictJunk)
    }

    private func flood(driver: IOBackendChoice, validation: ValidationMode, junk: [Junk]) throws {
        try requireDriver(driver)
        let backends = try (0..<2).map { _ in try TestBackend() }
        // One worker: the junk and the steady connection share it.
        let relay = try InProcessRelay(backends: backends, driver: driver) { configuration in
            configuration.tcpPort = 0
            configuration.maxDatagramBytes = Self.maxDatagram
            configuration.validation = validation
        }
        let tcp = try #require(relay.relay.tcpListenAddresses.first)
        let label = "tcp:\(tcp)"

        let block = junk.flatMap(\.bytes)
        let overLong = Array("over.long:".utf8) + Array(repeating: UInt8(ascii: "9"), count: Self.maxDatagram + 100)
        let steady = (0..<Self.steadyLines).map { "steady.\($0):\($0)|c" }
        let failures = Mutex<[String]>([])
        let closedOnTime = Mutex(0)
        let done = DispatchGroup()

        // The steady client: its lines in writes of a few lines, then its close.
        let steadyClient = try TCPIngestClient(to: tcp)
        done.enter()
        DispatchQueue.global().async {
            defer { done.leave() }
            do {
                for start in stride(from: 0, to: steady.count, by: Self.steadyChunk) {
                    let text = steady[start..<min(start + Self.steadyChunk, steady.count)].map { $0 + "\n" }.joined()
                    try steadyClient.write(Array(text.utf8))
                }
                steadyClient.finish()
            } catch {
                failures.withLock { $0.append("steady client: \(error)") }
            }
        }
        // The junk client: as fast as it can, bounded in count and time.
        done.enter()
        DispatchQueue.global().async {
            defer { done.leave() }
            let deadline = Date().addingTimeInterval(20)
            for _ in 0..<Self.junkConnections where Date() < deadline {
                do {
                    let client = try TCPIngestClient(to: tcp)
                    for _ in 0..<Self.blocks { try client.write(block) }
                    try client.write(overLong)
                    if client.waitForClose(seconds: 5) { closedOnTime.withLock { $0 += 1 } }
                } catch {
                    failures.withLock { $0.append("junk client: \(error)") }
                }
            }
        }
        #expect(done.wait(timeout: .now() + 30) == .success, "the clients finished within 30 s")
        #expect(failures.withLock { $0 } == [])
        #expect(closedOnTime.withLock { $0 } == Self.junkConnections, "each junk connection was closed by its over-long line")

        let received = try collect(from: backends, expectedLines: steady.count)
        let lines = received.lines.flatMap { $0 }
        #expect(lines.count == steady.count, "only the steady lines reach the backends, each once")
        #expect(lines.sorted() == steady.sorted(), "every steady line arrives, unaltered")
        for (index, backendLines) in received.lines.enumerated() {
            let numbers = backendLines.compactMap { Int($0.split(separator: ":")[0].dropFirst("steady.".count)) }
            #expect(numbers == numbers.sorted(), "backend \(index) got the steady lines in the order sent")
            #expect(backendLines.allSatisfy { expectedBackend(of: $0, backends: backends.count) == index })
        }
        #expect(waitForCounters(relay.relay) { $0[.tcpConnectionsClosedPeer, listener: label] == 1 }, "the steady client's close was read")

        // The relay still relays: a new client's line arrives.
        let after = try TCPIngestClient(to: tcp)
        try after.write(Array("after.flood:1|c\n".utf8))
        let later = try collect(from: backends, expectedLines: 1)
        #expect(later.lines.flatMap { $0 } == ["after.flood:1|c"])

        let counters = relay.stop()
        let connections = UInt64(Self.junkConnections)
        let repeats = connections * UInt64(Self.blocks)
        var expectedByReason: [LineScanner.Malformation: UInt64] = [:]
        var empty: UInt64 = 0
        for kind in junk {
            if let reason = kind.reason {
                expectedByReason[reason, default: 0] += UInt64(kind.lines) * repeats
            } else {
                empty += UInt64(kind.lines) * repeats
            }
        }
        // Each connection's over-long run is one line received and dropped too long.
        expectedByReason[.tooLong, default: 0] += connections
        for reason in LineScanner.Malformation.allCases {
            #expect(counters[.dropped(reason)] == expectedByReason[reason, default: 0], "lines dropped as \(reason)")
        }
        #expect(counters[.emptyLines] == empty)
        let junkLines = expectedByReason.values.reduce(0, +)
        #expect(counters[.linesReceived, listener: label] == UInt64(steady.count + 1) + junkLines,
                "every complete line read, and each over-long one, counted received once (empty lines apart)")
        #expect(counters[.linesForwarded] == UInt64(steady.count + 1))
        #expect(counters[.tcpConnectionsAccepted, listener: label] == connections + 2)
        #expect(counters[.tcpConnectionsClosedTooLong, listener: label] == connections, "each over-long line closed its own connection")
        #expect(counters[.tcpConnectionsClosedPeer, listener: label] == 1, "the steady connection closed by its client only")
        #expect(counters[.tcpConnectionsClosedStop, listener: label] == 1, "the last client's connection open at the stop")
        #expect(counters[.tcpConnectionsClosedError, listener: label] == 0)
        #expect(counters[.linesDroppedTCPPartial] == 0, "an over-long line is not a partial line")
    }
}
