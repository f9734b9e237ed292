import Foundation
import RoutingReference
import Testing
@testable import UringRelay

/// A DogStatsD mix through a real relay on loopback: each line arrives unchanged at the backend
/// its key routes to (computed here from the definition, `ReferenceRouting`), and under
/// `--validate strict` the bad lines are dropped and counted by reason.
@Suite("DogStatsD through the relay", .serialized, .timeLimit(.minutes(1)), .onOwnThread)
struct DogStatsDRelayTests {
    /// Good lines of every form, with the key each routes by under `name` and under `name+tags`.
    static let good: [(line: String, name: String, tags: [String])] = [
        ("page.views:1|c", "page.views", []),
        ("page.views:1|c|#env:prod,svc:web", "page.views", ["env:prod", "svc:web"]),
        ("page.views:1|c|#svc:web,env:prod", "page.views", ["env:prod", "svc:web"]),
        ("queue.depth:+3|g|@0.5|#shard:1", "queue.depth", ["shard:1"]),
        ("queue.depth:-2|g", "queue.depth", []),
        ("db.latency:320|ms|@0.1|#db:users,az:b|c:83c0a99c|T1656581400", "db.latency", ["az:b", "db:users"]),
        ("req.size:1:2:3|d|#z,a", "req.size", ["a", "z"]),
        ("req.hist:4.5|h", "req.hist", []),
        ("users.unique:u4711|s|#a", "users.unique", ["a"]),
        ("_sc|db.ping|2|d:1656581400|h:db1|#role:primary,env:prod|m:timed out", "db.ping", ["env:prod", "role:primary"]),
        ("_sc|db.ping|0|#env:prod,role:primary", "db.ping", ["env:prod", "role:primary"]),
        ("_sc|cache.ping|0", "cache.ping", []),
        ("_e{12,13}:deploy.start|version 1|2|3|p:low|#env:prod", "deploy.start", ["env:prod"]),
        ("_e{6,4}:backup|done|t:success", "backup", []),
        // A header counting characters, as the Datadog agent reads it: the title cut to 11 bytes.
        ("_e{11,4}:héllo wörld|text|#env:prod", "héllo wör", ["env:prod"]),
        // Two tags fields: the Datadog agent keeps the last.
        ("page.views:1|c|#stale:tag|#env:prod", "page.views", ["env:prod"]),
        // Lines the agent accepts (a field it ignores, Go's number syntax, any sample rate).
        ("page.views:1|c|", "page.views", []),
        ("queue.depth:21::22|d|@1e-1|#", "queue.depth", []),
        ("queue.depth:0x1p-2|g|@7|x:unknown", "queue.depth", []),
        ("_e{6,4}:backup|done|p:urgent", "backup", []),
    ]

    /// Lines `strict` drops, with the reason; `loose` forwards them all but the last.
    static let bad: [(line: String, reason: RelayCounter)] = [
        ("page.views:x|c", .linesDroppedBadValue),
        ("page.views:1|q", .linesDroppedBadType),
        ("page.views:1|c|@fast", .linesDroppedBadSampleRate),
        ("page|views:1|c", .linesDroppedBadName),
        ("page.views:1|c|T0", .linesDroppedBadTimestamp),
        ("_sc|db.ping|9", .linesDroppedBadServiceCheck),
        ("_e{60,4}:backup|done", .linesDroppedBadEventHeader),
    ]

    /// The routing key from the definition: the name (service check name, event title), and
    /// under `name+tags` then `|#` and the tags sorted, joined by `,`.
    static func key(_ name: String, _ tags: [String], nameAndTags: Bool) -> String {
        guard nameAndTags, !tags.isEmpty else { return name }
        return name + "|#" + tags.sorted { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }.joined(separator: ",")
    }

    @Test("strict and name+tags: good lines unchanged where their key goes, bad ones counted", arguments: ioDrivers)
    func strictNameAndTags(driver: IOBackendChoice) throws {
        try run(driver: driver, validation: .strict, hashKey: .nameAndTags)
    }

    @Test("loose and name: every line with a key forwarded unchanged by its name", arguments: ioDrivers)
    func looseName(driver: IOBackendChoice) throws {
        try run(driver: driver, validation: .loose, hashKey: .name)
    }

    func run(driver: IOBackendChoice, validation: ValidationMode, hashKey: HashKeyMode) throws {
        try requireDriver(driver)
        let backends = try (0..<4).map { _ in try TestBackend() }
        let relay = try InProcessRelay(backends: backends, driver: driver) { configuration in
            configuration.validation = validation
            configuration.hashKey = hashKey
        }
        let strict = validation == .strict
        let nameAndTags = hashKey == .nameAndTags
        // Good and bad lines interleaved, three datagrams.
        var lines: [String] = []
        for (index, good) in Self.good.enumerated() {
            lines.append(good.line)
            if index < Self.bad.count { lines.append(Self.bad[index].line) }
        }
        let datagrams = stride(from: 0, to: lines.count, by: 8).map { lines[$0..<min($0 + 8, lines.count)].joined(separator: "\n") }
        var expected = Array(repeating: [String](), count: backends.count)
        for good in Self.good {
            let key = Self.key(good.name, good.tags, nameAndTags: nameAndTags)
            expected[ReferenceRouting.primary(key, backends: backends.count)].append(good.line)
        }
        if !strict {
            for bad in Self.bad.dropLast() {
                // Loose: routed by the key the scanner finds (these all have their name first).
                let name = bad.line.hasPrefix("_sc|") ? "db.ping" : bad.line.hasPrefix("_e{") ? "backup" : metricName(of: bad.line)
                expected[ReferenceRouting.primary(name, backends: backends.count)].append(bad.line)
            }
        }
        try send(datagrams, to: relay.address)
        let total = expected.reduce(0) { $0 + $1.count }
        let received = try collect(from: backends, expectedLines: total, seconds: 10)
        let counters = relay.stop()
        for backend in backends.indices {
            #expect(received.lines[backend].sorted() == expected[backend].sorted(), "backend \(backend)")
        }
        #expect(counters[.linesReceived] == UInt64(lines.count))
        #expect(counters[.linesForwarded] == UInt64(total))
        if strict {
            for bad in Self.bad { #expect(counters[bad.reason] == 1, "\(bad.reason.name)") }
        } else {
            #expect(counters[.linesDroppedBadEventHeader] == 1)
        }
    }

    @Test("a bad --validate or --hash-key exits 64 naming the option", arguments: [
        (["--validate", "paranoid"], "invalid --validate 'paranoid': expected loose or strict"),
        (["--hash-key", "tags"], "invalid --hash-key 'tags': expected name or name+tags"),
    ])
    func badOption(_ arguments: [String], _ message: String) throws {
        let result = try RelayProcess.run(arguments + ["127.0.0.1:9"])
        #expect(result.status == 64)
        #expect(result.error.contains(message), "stderr: \(result.error)")
    }
}
