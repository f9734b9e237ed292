import Foundation
import Glibc
import RoutingReference
import Testing
@testable import UringRelay

/// A mirror backend over TCP (`--mirror tcp://…`): through the TCP backends' link (its own
/// queue, bounded by `--tcp-backend-queue`), counted in the mirror's counters, never at the
/// primary pool's expense.
@Suite("Mirror over TCP", .serialized, .timeLimit(.minutes(1)), .onOwnThread)
struct MirrorTCPKernelTests {
    /// Lines of distinct names, `count` of them.
    static func lines(_ count: Int, tag: String) -> [String] {
        (0..<count).map { "mtcp.\(tag).\($0).\(String(repeating: "x", count: 20)):\($0)|c" }
    }

    @Test("TCP mirror backends (tcp://, or no scheme under --sendproto TCP) get every line of the names jump hash gives them, byte-exact, in order, each ended by a newline; counted as the mirror's",
          arguments: ioDrivers, [false, true])
    func delivered(driver: IOBackendChoice, bySendProtocol: Bool) throws {
        try requireDriver(driver)
        let primaries = try (0..<2).map { _ in try TestBackend() }
        let mirrors = try (0..<2).map { _ in try TCPTestBackend() }
        defer { mirrors.forEach { $0.close() } }
        let relay = try InProcessRelay(backends: primaries, driver: driver) { configuration in
            if bySendProtocol {
                // The primary stays on UDP by its scheme; the mirror's take --sendproto's TCP.
                configuration.sendProtocol = .tcp
                configuration.backends = primaries.map { try! BackendAddress(parsing: "udp://" + $0.spec) }
                configuration.mirror = mirrors.map { try! BackendAddress(parsing: $0.plainSpec) }
            } else {
                configuration.mirror = mirrors.map { try! BackendAddress(parsing: $0.spec) }
            }
        }
        let lines = Self.lines(2_000, tag: "ok")
        try send(datagrams(lines, perDatagram: 10), to: relay.address)
        let received = try collect(from: primaries, expectedLines: lines.count)
        #expect(mirrors[0].wait { _ in mirrors.reduce(0) { $0 + $1.lines.count } >= lines.count })
        let counters = relay.stop()
        for backend in primaries.indices {
            #expect(received.lines[backend].sorted() == lines.filter { expectedBackend(of: $0, backends: 2) == backend }.sorted())
        }
        var streamBytes = 0
        for (index, mirror) in mirrors.enumerated() {
            let expected = lines.filter { ReferenceRouting.primary(metricName(of: $0), backends: mirrors.count) == index }
            let stream = mirror.streams.reduce([], +)
            streamBytes += stream.count
            #expect(String(decoding: stream, as: UTF8.self) == expected.map { $0 + "\n" }.joined(), "mirror \(index): every line and its newline, in order, nothing else")
            #expect(mirror.accepted == 1, "one persistent connection")
            #expect(counters[.linesSent, mirror: mirror.plainSpec] == UInt64(expected.count), "mirror \(index)'s own count")
            #expect(counters[.bytesSent, mirror: mirror.plainSpec] == UInt64(stream.count))
        }
        #expect(counters[.linesForwarded] == UInt64(lines.count))
        #expect(counters[.mirrorLines] == UInt64(lines.count))
        #expect(counters[.mirrorLinesSent] == UInt64(lines.count))
        #expect(counters[.mirrorBytesSent] == UInt64(streamBytes))
        #expect(counters[.mirrorLinesDroppedTCPQueueFull] == 0 && counters[.mirrorLinesDroppedTCPUnsentAtExit] == 0)
        #expect(counters.countedBackends == primaries.map(\.spec), "a mirror backend is never counted as a primary one")
    }

    @Test("a TCP mirror that accepts and never reads, or refuses: the primary gets every line before the stop; each mirrored line ends once as sent, queue-full, unsent or unconfirmed at exit",
          arguments: ioDrivers, [false, true])
    func stuckOrDead(driver: IOBackendChoice, dead: Bool) throws {
        try requireDriver(driver)
        let primaries = try (0..<2).map { _ in try TestBackend() }
        let mirror = try TCPTestBackend(reading: false, receiveBufferBytes: 4_096)
        defer { mirror.close() }
        if dead { try mirror.kill() }
        let relay = try InProcessRelay(backends: primaries, driver: driver) { configuration in
            configuration.mirror = [try! BackendAddress(parsing: mirror.spec)]
            configuration.tcpBackendQueueBytes = 64 << 10
            configuration.shutdownTimeoutNanoseconds = 300_000_000
        }
        let lines = Self.lines(20_000, tag: dead ? "dead" : "stuck")
        try send(datagrams(lines, perDatagram: 20), to: relay.address)
        let received = try collect(from: primaries, expectedLines: lines.count)
        #expect(received.totalLines == lines.count, "the primary got \(received.totalLines) of \(lines.count) before the stop")
        let counters = relay.stop()
        for backend in primaries.indices {
            #expect(received.lines[backend].sorted() == lines.filter { expectedBackend(of: $0, backends: 2) == backend }.sorted())
        }
        #expect(counters[.linesForwarded] == UInt64(lines.count))
        #expect(counters[.linesDroppedNoSendBuffer] == 0)
        #expect(counters.countedBackends == primaries.map(\.spec))
        let mirrored = counters[.mirrorLines]
        #expect(mirrored + counters[.mirrorLinesDroppedNoSendBuffer] == UInt64(lines.count))
        let full = counters[.mirrorLinesDroppedTCPQueueFull]
        #expect(full > 0, "the mirror's queue bound was reached")
        #expect(counters[.mirrorLinesSent] + full + counters[.mirrorLinesDroppedTCPUnsentAtExit] + counters[.mirrorLinesUnconfirmedAtExit] == mirrored,
                "each mirrored line ends exactly once")
        #expect(counters[.linesDroppedTCPQueueFull, mirror: mirror.plainSpec] == full, "the one mirror backend's own count")
        #expect(counters[.linesSent, mirror: mirror.plainSpec] == counters[.mirrorLinesSent])
        if dead {
            #expect(counters[.mirrorLinesSent] == 0)
            #expect(counters[.mirrorTCPConnectionFailures] > 0)
        }
    }
}
