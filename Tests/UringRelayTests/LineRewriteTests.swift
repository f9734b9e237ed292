@testable import RelayKernel
import RoutingReference
import Testing
@testable import UringRelay

/// What a processor with a rewrite did with a datagram: each backend's packets, and the counters.
private struct Rewritten {
    var packets: [[String]]
    var counters: RelayCounters
    /// Each backend's lines, in order.
    var lines: [[String]] {
        packets.map { packets in
            packets.flatMap { packet in packet.split(separator: "\n", omittingEmptySubsequences: true).map(String.init) }
        }
    }
}

/// Relays `datagram` through a fresh processor rewriting with `prefix` and `tags`.
private func rewrite(
    _ datagram: String, prefix: String = "", tags: String = "", backends: Int = 1, hashMode: HashMode = .jump,
    hashKey: HashKeyMode = .name, validation: ValidationMode = .loose, packetBytes: Int = 1400, maxDatagramBytes: Int = 8192
) throws -> Rewritten {
    let router = hashMode == .jump
        ? Router(backendCount: backends)
        : Router(backends: (1...backends).map { BackendAddress(host: "10.0.0.\($0)", port: 8125) }, hashMode: hashMode)
    var processor = try DatagramProcessor(
        router: router, packetBytes: packetBytes, maxDatagramBytes: maxDatagramBytes, validation: validation, hashKey: hashKey,
        rewrite: LineRewrite(prefix: prefix, tags: tags))
    let bytes = Array(datagram.utf8)
    processor.relay(datagram: bytes.span.bytes, now: 1)
    processor.assembler.closeAll()
    var packets = Array(repeating: [String](), count: backends)
    while let slot = processor.assembler.nextReady() {
        let backend = processor.assembler.pool.backend(of: slot)
        let packet = processor.assembler.pool.withBytes(ofSlot: slot) { span in span.withUnsafeBytes { Array($0) } }
        packets[backend].append(String(decoding: packet, as: UTF8.self))
        _ = processor.sendCompleted(slot: slot, result: Int32(packet.count))
    }
    return Rewritten(packets: packets, counters: processor.counters)
}

/// The backend the Go StatsRelay's routing gives `key` among `buckets` (`ReferenceRouting`).
private func referenceBackend(_ key: String, _ buckets: Int) -> Int { ReferenceRouting.primary(key, backends: buckets) }

@Suite("Rewriting: --metrics-prefix and --metrics-tags")
struct LineRewriteTests {
    /// Each line as written by hand after its rewrite by prefix `app` and tags `dc:x,role:web`.
    @Test("each form is rewritten where its fields allow: metrics prefixed and tagged, service checks and events tagged only",
          arguments: [
              ("api.hits:1|c", "app.api.hits:1|c|#dc:x,role:web"),
              ("api.hits:1|c|@0.5", "app.api.hits:1|c|@0.5|#dc:x,role:web"),
              ("api.hits:1|c|#env:prod", "app.api.hits:1|c|#env:prod,dc:x,role:web"),
              ("lat:1:2:3|d|#env:prod|c:83c0a99c|T1656581400", "app.lat:1:2:3|d|#env:prod,dc:x,role:web|c:83c0a99c|T1656581400"),
              ("lat:1|ms|T1656581400", "app.lat:1|ms|T1656581400|#dc:x,role:web"),
              ("lat:1|ms|#|T1", "app.lat:1|ms|#dc:x,role:web|T1"),
              ("lat:1|ms|#env:prod,", "app.lat:1|ms|#env:prod,dc:x,role:web"),
              ("_sc|db.ping|2|#a,|m:slow", "_sc|db.ping|2|#a,dc:x,role:web|m:slow"),
              ("g:-2|g", "app.g:-2|g|#dc:x,role:web"),
              ("bare:1", "app.bare:1|#dc:x,role:web"),
              ("_sc|db.ping|2", "_sc|db.ping|2|#dc:x,role:web"),
              ("_sc|db.ping|2|#env:prod|m:slow", "_sc|db.ping|2|#env:prod,dc:x,role:web|m:slow"),
              ("_sc|db.ping|2|h:db1|m:timed out|#tags", "_sc|db.ping|2|h:db1|m:timed out|#tags,dc:x,role:web"),
              ("_sc|db.ping|2|m:timed out", "_sc|db.ping|2|#dc:x,role:web|m:timed out"),
              // The Datadog agent keeps the last of two tags fields: the tags join that one.
              ("a:1|c|#first|#last|T1", "app.a:1|c|#first|#last,dc:x,role:web|T1"),
              ("_e{5,4}:title|text|#a|#b", "_e{5,4}:title|text|#a|#b,dc:x,role:web"),
              ("_e{11,4}:héllo wörld|text|#a", "_e{11,4}:héllo wörld|text|#a,dc:x,role:web"),
              ("_e{5,4}:title|text", "_e{5,4}:title|text|#dc:x,role:web"),
              ("_e{5,6}:title|te|#xt|p:low", "_e{5,6}:title|te|#xt|p:low|#dc:x,role:web"),
              ("_e{5,4}:title|text|#env:prod|t:info", "_e{5,4}:title|text|#env:prod,dc:x,role:web|t:info"),
              ("_sc:1|c", "app._sc:1|c|#dc:x,role:web"),
          ])
    func forms(line: String, expected: String) throws {
        let relayed = try rewrite(line, prefix: "app", tags: "dc:x,role:web")
        #expect(relayed.lines == [[expected]])
        #expect(relayed.counters[.linesForwarded] == 1)
        // The function `statsrelay hash` shows lines with gives the same bytes.
        let shown = try #require(LineRewrite(prefix: "app", tags: "dc:x,role:web").rewrite(line: line, hashKey: .name))
        #expect(String(decoding: shown.line, as: UTF8.self) == expected)
    }

    @Test("a prefix alone and tags alone", arguments: [
        ("app", "", "a:1|c|#t", "app.a:1|c|#t"),
        ("", "k:v", "a:1|c|#t", "a:1|c|#t,k:v"),
        ("a.b-c", "", "_e{1,1}:x|y", "_e{1,1}:x|y"),
    ])
    func oneOfTwo(prefix: String, tags: String, line: String, expected: String) throws {
        #expect(try rewrite(line, prefix: prefix, tags: tags).lines == [[expected]])
    }

    @Test("lines of a datagram are each rewritten, line endings and empty lines handled as without a rewrite")
    func datagram() throws {
        let relayed = try rewrite("a:1|c\r\n\nb:2|g|#x\n_sc|c|0\nbad line\n", prefix: "p", tags: "t")
        #expect(relayed.lines == [["p.a:1|c|#t", "p.b:2|g|#x,t", "_sc|c|0|#t"]])
        #expect(relayed.counters[.linesDroppedMissingColon] == 1)
        #expect(relayed.counters[.emptyLines] == 1)
    }

    @Test("under jump a metric goes where the FNV-1a 64 of its prefixed name sends it; events and service checks by their own name",
          arguments: [HashKeyMode.name, .nameAndTags])
    func jumpRoutesPrefixedName(hashKey: HashKeyMode) throws {
        let names = (0..<200).map { "svc.metric\($0)" }
        let datagram = names.map { "\($0):1|c" }.joined(separator: "\n")
        let relayed = try rewrite(datagram, prefix: "eu", tags: "dc:x", backends: 5, hashKey: hashKey)
        var expected = Array(repeating: [String](), count: 5)
        for name in names { expected[referenceBackend("eu." + name, 5)].append("eu.\(name):1|c|#dc:x") }
        #expect(relayed.lines == expected)
        // Both forms DogStatsD adds keep their unprefixed keys.
        let checks = (0..<50).map { "_sc|check\($0)|0" }
        let byCheck = try rewrite(checks.joined(separator: "\n"), prefix: "eu", backends: 5, hashKey: hashKey)
        var expectedChecks = Array(repeating: [String](), count: 5)
        for (index, check) in checks.enumerated() { expectedChecks[referenceBackend("check\(index)", 5)].append(check) }
        #expect(byCheck.lines == expectedChecks)
    }

    @Test("under name+tags the key is the prefixed name and the line's own tags sorted; the added tags are not in it")
    func nameAndTagsKey() throws {
        let lines = (0..<100).map { "m\($0 % 7):1|c|#z:\($0),a:\($0 % 3)" }
        let relayed = try rewrite(lines.joined(separator: "\n"), prefix: "p", tags: "added:1", backends: 4, hashKey: .nameAndTags)
        var expected = Array(repeating: [String](), count: 4)
        for index in 0..<100 {
            let key = "p.m\(index % 7)|#a:\(index % 3),z:\(index)"
            expected[referenceBackend(key, 4)].append("p." + lines[index] + ",added:1")
        }
        #expect(relayed.lines == expected)
    }

    /// On a ring the prefixed name is written out for its md5: the same backend as a line that
    /// already carried the prefix, unrewritten, gets from a relay without one.
    @Test("on the etsy and ketama rings a metric goes where its prefixed name, relayed unprefixed, would",
          arguments: [HashMode.etsy, .ketama], [HashKeyMode.name, .nameAndTags])
    func ringRoutesPrefixedName(mode: HashMode, hashKey: HashKeyMode) throws {
        let lines = (0..<150).map { "svc.n\($0):1|c|#b:\($0 % 4),a" }
        let rewritten = try rewrite(lines.joined(separator: "\n"), prefix: "eu", backends: 6, hashMode: mode, hashKey: hashKey)
        let plain = try rewrite(lines.map { "eu." + $0 }.joined(separator: "\n"), backends: 6, hashMode: mode, hashKey: hashKey)
        #expect(rewritten.lines == plain.lines)
        #expect(Set(rewritten.lines.map(\.count)).count > 1, "spread over the backends")
    }

    @Test("a rewritten line counts at its rewritten length toward --packet-len: two lines filling a packet exactly share it, one byte more splits them",
          arguments: [0, 1])
    func packetEdge(over: Int) throws {
        // 42-byte packets; each line grows by "p." and "|#t" (5 bytes): 15 + 5 + 1 = 21 with its newline.
        let first = "aaaaa:1234567|c"  // 15 bytes
        let second = "b:" + String(repeating: "9", count: 11 + over) + "|c"  // 15 (+over) bytes
        let relayed = try rewrite(first + "\n" + second, prefix: "p", tags: "t", packetBytes: 42)
        let rewritten = ["p." + first + "|#t", "p." + second + "|#t"]
        if over == 0 {
            #expect(relayed.packets == [[rewritten.joined(separator: "\n") + "\n"]])
            #expect(relayed.packets[0][0].utf8.count == 42)
        } else {
            #expect(relayed.packets == [[rewritten[0] + "\n", rewritten[1] + "\n"]])
        }
    }

    @Test("a line rewritten to exactly --packet-len goes alone at exactly that length; one byte longer alone at its own")
    func alonePacketEdge() throws {
        for extra in [0, 1] {
            let line = "n:" + String(repeating: "1", count: 30 + extra) + "|c"  // 34 (+1) bytes, 40 (+1) rewritten
            let relayed = try rewrite("a:1|c\n" + line, prefix: "pp", tags: "t", packetBytes: 40)
            #expect(relayed.packets == [["pp.a:1|c|#t\n", "pp." + line + "|#t"]])
            #expect(relayed.packets[0][1].utf8.count == 40 + extra)
        }
    }

    @Test("a line the rewrite takes to 65 507 bytes is sent whole; to 65 508, dropped whole and counted as too_long_rewritten",
          arguments: [0, 1])
    func largestDatagramEdge(over: Int) throws {
        // "p." and "|#tag" add 7 bytes.
        let line = "big:" + String(repeating: "5", count: 65_507 - 7 - 4 - 2 + over) + "|c"
        let relayed = try rewrite("a:1|c\n" + line + "\nb:2|c", prefix: "p", tags: "tag", maxDatagramBytes: 65_535)
        if over == 0 {
            #expect(relayed.lines[0] == ["p.a:1|c|#tag", "p." + line + "|#tag", "p.b:2|c|#tag"])
            #expect(relayed.packets[0].map(\.utf8.count).contains(65_507))
            #expect(relayed.counters[.linesDroppedTooLongRewritten] == 0)
        } else {
            #expect(relayed.lines[0] == ["p.a:1|c|#tag", "p.b:2|c|#tag"])
            #expect(relayed.counters[.linesDroppedTooLongRewritten] == 1)
            #expect(relayed.counters[.linesForwarded] == 2)
        }
        #expect(relayed.counters[.linesReceived] == 3)
    }

    @Test("a datagram of the shortest lines, each rewritten, never runs the send slots out", arguments: [100, 1_400])
    func reserveCoversGrowth(packetBytes: Int) throws {
        // 8192 bytes of "a:\n": 2 731 lines, each growing by 20 + 1 + 10 + 2 bytes.
        let datagram = String(repeating: "a:\n", count: 2_730) + "a:"
        let relayed = try rewrite(
            datagram, prefix: String(repeating: "p", count: 20), tags: String(repeating: "t", count: 10), backends: 3,
            packetBytes: packetBytes)
        #expect(relayed.counters[.linesDroppedNoSendBuffer] == 0)
        #expect(relayed.counters[.linesForwarded] == 2_731)
    }

    @Test("strict validation sees the line as received: the rewrite follows it")
    func strictBeforeRewrite() throws {
        let relayed = try rewrite("a:x|c\nb:1|c", prefix: "p", tags: "t", validation: .strict)
        #expect(relayed.lines == [["p.b:1|c|#t"]])
        #expect(relayed.counters[.linesDroppedBadValue] == 1)
    }

    @Test("bad prefixes are refused, naming the flag", arguments: [
        ("a:b", "may not hold"), ("a|b", "may not hold"), ("a\nb", "may not hold"), ("a\0b", "may not hold"),
        ("a\rb", "may not hold"), ("_e{x", "DogStatsD event"), ("app.", "leave it out"),
    ])
    func badPrefix(prefix: String, reason: String) {
        #expect(throws: ConfigurationError.self) { try LineRewrite(prefix: prefix, tags: "") }
        do {
            _ = try LineRewrite(prefix: prefix, tags: "")
        } catch {
            #expect(error.argument == "--metrics-prefix")
            #expect(error.reason.contains(reason))
        }
    }

    @Test("bad tags are refused, naming the flag", arguments: [
        "a|b", "a#b", ",a", "a,", "a,,b", "a\nb", "a\0b",
    ])
    func badTags(tags: String) {
        do {
            _ = try LineRewrite(prefix: "", tags: tags)
            Issue.record("'\(tags)' accepted")
        } catch {
            #expect(error.argument == "--metrics-tags")
        }
    }

    @Test("good prefixes and tags are taken as given", arguments: [
        ("app", "env:prod"), ("a.b_c-d", "k:v,k2,url:http://x"), ("", ""), ("x#y", "a:b:c"),
    ])
    func goodValues(prefix: String, tags: String) throws {
        let rewrite = try LineRewrite(prefix: prefix, tags: tags)
        #expect(rewrite.prefix == prefix && rewrite.tags == tags)
    }
}

@Suite("--metrics-prefix and --metrics-tags options")
struct LineRewriteOptionTests {
    static let backends = [ConfigFile.Backend(address: "127.0.0.1:9")]

    @Test("file keys and flags set them, a flag overriding only its own key; the default rewrites nothing")
    func sources() throws {
        var none = ConfigFile()
        none.backends = Self.backends
        #expect(try ConfigFile.resolve(file: nil, flags: none, allowedCPUs: [0]).rewrite.isEmpty)
        let file = try ConfigFile.parse("""
            backends: ["127.0.0.1:9"]
            metrics-prefix: app
            metrics-tags: env:prod
            """, source: "test.yaml")
        let fromFile = try ConfigFile.resolve(file: file, flags: ConfigFile(), allowedCPUs: [0])
        #expect(fromFile.rewrite.prefix == "app" && fromFile.rewrite.tags == "env:prod")
        var flags = ConfigFile()
        flags.metricsTags = "dc:x"
        let merged = try ConfigFile.resolve(file: file, flags: flags, allowedCPUs: [0])
        #expect(merged.rewrite.prefix == "app" && merged.rewrite.tags == "dc:x")
    }

    @Test("a bad flag names the flag; a bad key names the file, line and key")
    func badValues() throws {
        var flags = ConfigFile()
        flags.backends = Self.backends
        flags.metricsPrefix = "a|b"
        #expect { try ConfigFile.resolve(file: nil, flags: flags, allowedCPUs: [0]) } throws: { error in
            "\(error)".contains("invalid --metrics-prefix 'a|b'")
        }
        flags.metricsPrefix = nil
        flags.metricsTags = "a,,b"
        #expect { try ConfigFile.resolve(file: nil, flags: flags, allowedCPUs: [0]) } throws: { error in
            "\(error)".contains("invalid --metrics-tags 'a,,b'")
        }
        let file = try ConfigFile.parse("backends: [\"127.0.0.1:9\"]\nmetrics-tags: \"a#b\"\n", source: "test.yaml")
        #expect { try ConfigFile.resolve(file: file, flags: ConfigFile(), allowedCPUs: [0]) } throws: { error in
            "\(error)".hasPrefix("test.yaml:2: metrics-tags")
        }
    }

    @Test("both are restart-only")
    func restartOnly() {
        #expect(ConfigFile.key(named: "metrics-prefix")?.reload == .restart)
        #expect(ConfigFile.key(named: "metrics-tags")?.reload == .restart)
    }
}
