import Foundation
import RoutingReference
import Testing
@testable import UringRelay

/// `--metrics-prefix` and `--metrics-tags` through a real relay on loopback: each line arrives
/// rewritten (as written out here by hand) at the backend its prefixed key routes to
/// (`ReferenceRouting`), packets keep to `--packet-len` at the rewritten lengths, and
/// `statsrelay hash` with the same flags names the backend each line reached.
@Suite("Rewriting through the relay", .serialized, .timeLimit(.minutes(1)), .onOwnThread)
struct RewriteRelayTests {
    /// Lines of each form, each as rewritten by prefix `eu` and tags `dc:x`, and the key it
    /// routes by under `name` and under `name+tags` (tags sorted).
    static let lines: [(line: String, rewritten: String, name: String, nameAndTags: String)] = [
        ("page.views:1|c", "eu.page.views:1|c|#dc:x", "eu.page.views", "eu.page.views"),
        ("page.views:1|c|#svc:web,env:prod", "eu.page.views:1|c|#svc:web,env:prod,dc:x", "eu.page.views", "eu.page.views|#env:prod,svc:web"),
        ("db.latency:3|ms|#db:u|c:83c0|T1656581400", "eu.db.latency:3|ms|#db:u,dc:x|c:83c0|T1656581400", "eu.db.latency", "eu.db.latency|#db:u"),
        ("req.size:1:2:3|d|@0.5", "eu.req.size:1:2:3|d|@0.5|#dc:x", "eu.req.size", "eu.req.size"),
        ("_sc|db.ping|2|h:db1|m:timed out", "_sc|db.ping|2|h:db1|#dc:x|m:timed out", "db.ping", "db.ping"),
        ("_sc|db.ping|0|#role:primary", "_sc|db.ping|0|#role:primary,dc:x", "db.ping", "db.ping|#role:primary"),
        ("_e{6,4}:backup|done|t:success", "_e{6,4}:backup|done|t:success|#dc:x", "backup", "backup"),
    ] + (0..<40).map { ("svc.n\($0):\($0)|c", "eu.svc.n\($0):\($0)|c|#dc:x", "eu.svc.n\($0)", "eu.svc.n\($0)") }

    @Test("lines rewritten, each at the backend of its prefixed key", arguments: ioDrivers, [HashKeyMode.name, .nameAndTags])
    func rewrittenAndRouted(driver: IOBackendChoice, hashKey: HashKeyMode) throws {
        try requireDriver(driver)
        let backends = try (0..<4).map { _ in try TestBackend() }
        let relay = try InProcessRelay(backends: backends, driver: driver) { configuration in
            configuration.hashKey = hashKey
            configuration.rewrite = try! LineRewrite(prefix: "eu", tags: "dc:x")
        }
        let datagrams = stride(from: 0, to: Self.lines.count, by: 6).map {
            Self.lines[$0..<min($0 + 6, Self.lines.count)].map(\.line).joined(separator: "\n")
        }
        var expected = Array(repeating: [String](), count: backends.count)
        for line in Self.lines {
            let key = hashKey == .name ? line.name : line.nameAndTags
            expected[ReferenceRouting.primary(key, backends: backends.count)].append(line.rewritten)
        }
        try send(datagrams, to: relay.address)
        let received = try collect(from: backends, expectedLines: Self.lines.count, seconds: 10)
        let counters = relay.stop()
        for backend in backends.indices {
            #expect(received.lines[backend].sorted() == expected[backend].sorted(), "backend \(backend)")
        }
        #expect(counters[.linesForwarded] == UInt64(Self.lines.count))
    }

    @Test("packets keep to --packet-len at the rewritten lengths; a line rewritten past 65 507 bytes is dropped and counted",
          arguments: ioDrivers)
    func packetLength(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backends = [try TestBackend()]
        let relay = try InProcessRelay(backends: backends, driver: driver) { configuration in
            configuration.packetBytes = 64
            configuration.maxDatagramBytes = 65_535
            configuration.flushIntervalNanoseconds = 1_000_000
            configuration.rewrite = try! LineRewrite(prefix: "p", tags: "t")
        }
        // Each 26-byte line becomes 31 bytes ("p." and "|#t"), 32 with its newline: two fill a
        // 64-byte packet exactly. The 27-byte ones (33 with the newline) go one to a packet.
        let exact = (0..<10).map { "fill.\($0):" + String(repeating: "1", count: 26 - 9) + "|c" }
        let over = (0..<4).map { "over.\($0):" + String(repeating: "1", count: 27 - 9) + "|c" }
        // 65 505 bytes with its 5 bytes of rewrite: a line UDP over IPv4 cannot carry.
        let huge = "huge:" + String(repeating: "9", count: 65_505 - 5 - 2) + "|c"
        try send([exact.joined(separator: "\n"), over.joined(separator: "\n"), huge], to: relay.address)
        let received = try collect(from: backends, expectedLines: exact.count + over.count, seconds: 10)
        let counters = relay.stop()
        let packets = received.datagrams[0]
        #expect(packets.allSatisfy { $0.utf8.count <= 64 }, "\(packets.map(\.utf8.count))")
        #expect(packets.filter { $0.hasPrefix("p.fill") }.map(\.utf8.count) == Array(repeating: 64, count: 5))
        #expect(packets.filter { $0.hasPrefix("p.over") }.map(\.utf8.count) == Array(repeating: 33, count: 4))
        #expect(received.lines[0].sorted() == (exact + over).map { "p." + $0 + "|#t" }.sorted())
        #expect(counters[.linesDroppedTooLongRewritten] == 1)
        #expect(counters[.linesForwarded] == UInt64(exact.count + over.count))
    }

    @Test("statsrelay hash with the relay's --metrics-prefix and --hash-key names the backend each line reached",
          arguments: ioDrivers, [HashKeyMode.name, .nameAndTags])
    func hashCommandAgrees(driver: IOBackendChoice, hashKey: HashKeyMode) throws {
        try requireDriver(driver)
        let backends = try (0..<3).map { _ in try TestBackend() }
        let relay = try InProcessRelay(backends: backends, driver: driver) { configuration in
            configuration.hashKey = hashKey
            configuration.rewrite = try! LineRewrite(prefix: "eu", tags: "dc:x")
        }
        let lines = Self.lines.map(\.line)
        try send(stride(from: 0, to: lines.count, by: 6).map { lines[$0..<min($0 + 6, lines.count)].joined(separator: "\n") },
                 to: relay.address)
        let received = try collect(from: backends, expectedLines: lines.count, seconds: 10)
        _ = relay.stop()
        var reached: [String: Int] = [:]
        for (backend, got) in received.lines.enumerated() {
            for line in got { reached[line] = backend }
        }
        let result = try RelayProcess.run(
            ["hash", "--backends", backends.map(\.spec).joined(separator: ","), "--hash-key", hashKey.rawValue, "-metrics-prefix", "eu"]
                + lines)
        #expect(result.status == 0, "\(result.error)")
        let answers = result.output.split(separator: "\n")
        try #require(answers.count == lines.count)
        for (line, answer) in zip(Self.lines, answers) {
            let fields = answer.split(separator: " ")
            #expect(String(fields[0]) == (hashKey == .name ? line.name : line.nameAndTags))
            let index = try #require(fields.first { $0.hasPrefix("index=") }.flatMap { Int($0.dropFirst(6)) })
            #expect(reached[line.rewritten] == index, "\(line.line)")
        }
    }

    @Test("a bad --metrics-prefix or -metrics-tags exits 64 naming the flag; both spellings are taken", arguments: [
        (["--metrics-prefix", "a:b"], "invalid --metrics-prefix 'a:b'"),
        (["-metrics-prefix", "a|b"], "invalid --metrics-prefix 'a|b'"),
        (["-metrics-tags", "a,,b"], "invalid --metrics-tags 'a,,b'"),
        (["--metrics-tags", "#a"], "invalid --metrics-tags '#a'"),
    ])
    func badOption(_ arguments: [String], _ message: String) throws {
        let result = try RelayProcess.run(arguments + ["127.0.0.1:9"])
        #expect(result.status == 64)
        #expect(result.error.contains(message), "stderr: \(result.error)")
    }
}
