@testable import RelayKernel
import RoutingReference
import Testing
@testable import UringRelay

/// The `name+tags` key written again from its definition (docs/operations.md, "DogStatsD
/// lines") with strings, never from the code under test; FNV-1a 64 and the jump hash are
/// `ReferenceRouting`'s.
enum DogStatsDReference {
    /// The `name+tags` key: the name alone without tags; else `name|#` and the distinct
    /// non-empty tags sorted by their bytes, joined by `,`; past 64 tags, `name|#~` and the 16
    /// hex digits of the sum of the tags' FNV-1a 64 (repeats included).
    static func nameAndTagsKey(name: String, tags: [String]) -> [UInt8] {
        let kept = tags.filter { !$0.isEmpty }.map { Array($0.utf8) }
        if kept.isEmpty { return Array(name.utf8) }
        if kept.count > 64 {
            let sum = kept.reduce(UInt64(0)) { $0 &+ ReferenceRouting.fnv1a64($1) }
            let hex = String(sum, radix: 16)
            return Array("\(name)|#~\(String(repeating: "0", count: 16 - hex.count))\(hex)".utf8)
        }
        let sorted = Set(kept).sorted { $0.lexicographicallyPrecedes($1) }
        return Array(name.utf8) + Array("|#".utf8) + Array(sorted.joined(separator: [UInt8(ascii: ",")]))
    }
}

/// What a processor did with a datagram: each backend's lines, and the counters.
struct Relayed {
    var lines: [[String]]
    var counters: RelayCounters
}

/// Relays `datagram` through a fresh processor and collects what each backend gets.
func relayThrough(
    _ datagram: String, backends: Int = 1, hashMode: HashMode = .jump, validation: ValidationMode = .loose,
    hashKey: HashKeyMode = .name
) throws -> Relayed {
    let router = hashMode == .jump
        ? Router(backendCount: backends)
        : Router(backends: (1...backends).map { BackendAddress(host: "10.0.0.\($0)", port: 8125) }, hashMode: hashMode)
    var processor = try DatagramProcessor(
        router: router, packetBytes: 1400, maxDatagramBytes: 8192, validation: validation, hashKey: hashKey)
    let bytes = Array(datagram.utf8)
    bytes.withUnsafeBytes { raw in processor.relay(datagram: raw.bytes, now: 1) }
    processor.assembler.closeAll()
    var lines = Array(repeating: [String](), count: backends)
    while let slot = processor.assembler.nextReady() {
        let backend = processor.assembler.pool.backend(of: slot)
        let packet = processor.assembler.pool.withBytes(ofSlot: slot) { span in span.withUnsafeBytes { Array($0) } }
        lines[backend] += packet.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: true)
            .map { String(decoding: $0, as: UTF8.self) }
        _ = processor.sendCompleted(slot: slot, result: Int32(packet.count))
    }
    return Relayed(lines: lines, counters: processor.counters)
}

/// The reason a line is dropped for, as its counter name ends (`bad_value`), or `ok`.
func verdict(_ line: String, _ validation: ValidationMode) throws -> String {
    let relayed = try relayThrough(line, validation: validation)
    #expect(relayed.counters[.linesReceived] == 1, "\(line)")
    if relayed.counters[.linesForwarded] == 1 {
        #expect(relayed.lines[0] == [line], "forwarded unchanged")
        return "ok"
    }
    let dropped = LineScanner.Malformation.allCases.filter { relayed.counters[.dropped($0)] == 1 }
    #expect(dropped.count == 1, "\(line): counted once, by one reason")
    return dropped.first.map { String(RelayCounter.dropped($0).name.split(separator: ".").last!) } ?? "lost"
}

@Suite("DogStatsD lines")
struct DogStatsDTests {
    /// The scanner's key for each form (loose), or why it drops the line.
    @Test("the scanner keys metrics by name, service checks by name, events by title", arguments: [
        ("page.views:1|c", "ok page.views"),
        ("_sc|db.ping|0", "ok db.ping"),
        ("_sc|db.ping|2|d:1656581400|h:db1|#env:prod|m:timed out", "ok db.ping"),
        ("_sc|db.ping", "ok db.ping"),
        ("_sc||0", "bad emptyName"),
        ("_sc|", "bad emptyName"),
        ("_sc:1|c", "ok _sc"),
        ("_e{5,4}:title|text", "ok title"),
        ("_e{5,4}:title|text|p:low|#env:prod", "ok title"),
        ("_e{7,9}:a|title|text|with|#a:b", "ok a|title"),
        ("_e{5,0}:title|", "ok title"),
        ("_e{0,4}:|text", "bad emptyName"),
        // The Datadog agent's reading: `T + 1 + X` at most the bytes after the header, which are
        // taken whatever they are. A header counting characters (Datadog's own shell example
        // counts with `${#title}`) gets a title cut where the bytes fall, as the agent's is.
        ("_e{11,4}:héllo wörld|text", "ok héllo wör"),
        ("_e{5,3}:title|text", "ok title"),
        ("_e{4,4}:title|text", "ok titl"),
        ("_e{5,4}:titleXtext", "ok title"),
        ("_e{5,4x:title|text", "ok title"),
        ("_e{+5,04}:title|text", "ok title"),
        ("_e{5,-0}:title|", "ok title"),
        ("_e{0005,4}:title|text", "ok title"),
        // Headers that lie about the line, or are not numbers: never a read past the line.
        ("_e{500,4}:title|text", "bad badEventHeader"),
        ("_e{5,400}:title|text", "bad badEventHeader"),
        ("_e{5,6}:title|text", "bad badEventHeader"),
        ("_e{-1,4}:title|text", "bad badEventHeader"),
        ("_e{5,-4}:title|text", "bad badEventHeader"),
        ("_e{5,4}}:title|text", "bad badEventHeader"),
        ("_e{5 ,4}:title|text", "bad badEventHeader"),
        ("_e{5,4}title|text", "bad badEventHeader"),
        ("_e{5;4}:title|text", "bad badEventHeader"),
        ("_e{,4}:title|text", "bad badEventHeader"),
        ("_e{5,}:title|text", "bad badEventHeader"),
        ("_e{5,4", "bad badEventHeader"),
        ("_e{", "bad badEventHeader"),
        ("_e{99999999999999999999,4}:title|text", "bad badEventHeader"),
        ("_e{5,4}:title", "bad badEventHeader"),
        ("_e:1|c", "ok _e"),
        ("_:1|c", "ok _"),
        ("_", "bad missingColon"),
    ])
    func scannerKeys(_ line: String, _ expected: String) {
        let bytes = Array(line.utf8)
        var results: [String] = []
        bytes.withUnsafeBytes { raw in
            var offset = 0
            while let scanned = LineScanner.next(in: raw.bytes, from: &offset) {
                switch scanned {
                case .valid(let start, let end, let key):
                    #expect(start == 0 && end == bytes.count)
                    results.append("ok " + String(decoding: bytes[key], as: UTF8.self))
                case .empty: results.append("empty")
                case .malformed(let reason): results.append("bad \(reason)")
                }
            }
        }
        #expect(results == [expected])
    }

    /// Every line form under both modes: `loose` passes anything with a key, `strict` drops
    /// and counts by reason what the Datadog agent's parser refuses, and passes what it takes.
    @Test("each form under --validate loose and strict", arguments: [
        // Metrics: every type, deltas, rates, tags, container ids, timestamps, packing.
        ("a.b:1|c", "ok", "ok"),
        ("a.b:-1|c", "ok", "ok"),
        ("a.b:1.5|c|@0.1", "ok", "ok"),
        ("a.b:+3|g", "ok", "ok"),
        ("a.b:-3.5|g", "ok", "ok"),
        ("a.b:320|ms|@1.000", "ok", "ok"),
        ("a.b:.5|h|@.5", "ok", "ok"),
        ("a.b:1.5E-2|d", "ok", "ok"),
        ("a.b:u4711|s", "ok", "ok"),
        ("a.b:1:2:3|d", "ok", "ok"),
        ("a.b:1:2:3|d|@0.5|#env:prod,svc:web|c:83c0a99c|T1656581400", "ok", "ok"),
        ("a.b:1|c|T1656581400|#env:prod|@0.5", "ok", "ok"),
        ("m3:1|c|c:abc|e:x|card:high|T1656581400", "ok", "ok"),
        ("a b\u{7f}é:1|c", "ok", "ok"),
        // Names: any byte but ':', '|', '\n', NUL (the agent's name and value are the first field).
        ("a|b:1|c", "ok", "bad_name"),
        // Values: Go's ParseFloat syntax, packed values split at ':' with empty pieces skipped.
        ("a.b:|c", "ok", "bad_value"),
        ("a.b:x|c", "ok", "bad_value"),
        ("a.b:1:|d", "ok", "ok"),
        ("a.b::1|d", "ok", "ok"),
        ("a.b:::|d", "ok", "bad_value"),
        ("a.b:1.2.3|ms", "ok", "bad_value"),
        ("a.b:++1|g", "ok", "bad_value"),
        ("a.b:1e|d", "ok", "bad_value"),
        ("a.b:1__0|c", "ok", "bad_value"),
        ("a.b:|s", "ok", "bad_value"),
        ("a.b:x:y|s", "ok", "ok"),
        ("name:with:colons:1|c", "ok", "bad_value"),
        // NaN and Inf parse, but the agent's aggregator discards such samples: a line passes if
        // one of its values is a sample the agent keeps.
        ("a.b:Inf|c", "ok", "bad_value"),
        ("a.b:NaN:-inf|d", "ok", "bad_value"),
        ("a.b:NaN:1|d", "ok", "ok"),
        ("a.b:NaN|s", "ok", "ok"),
        ("a.b:1:1e400|d", "ok", "bad_value"),
        // Types.
        ("a.b:1", "ok", "bad_type"),
        ("a.b:1|", "ok", "bad_type"),
        ("a.b:1|kv", "ok", "bad_type"),
        ("a.b:1|msx", "ok", "bad_type"),
        ("a.b:1|C", "ok", "bad_type"),
        ("a.b:x|q", "ok", "bad_type"),
        // Sample rates: any number ParseFloat takes, whatever its value.
        ("a.b:1|c|@0", "ok", "ok"),
        ("a.b:1|c|@2", "ok", "ok"),
        ("a.b:1|c|@-0.5", "ok", "ok"),
        ("a.b:1|c|@NaN", "ok", "ok"),
        ("a.b:1|c|@", "ok", "bad_sample_rate"),
        ("a.b:1|c|@0.x", "ok", "bad_sample_rate"),
        ("a.b:1|c|@1e400", "ok", "bad_sample_rate"),
        ("a.b:1|c|@0.5|@x", "ok", "bad_sample_rate"),
        // Timestamps: ParseInt, at least 1.
        ("a.b:1|c|T+5", "ok", "ok"),
        ("a.b:1|c|T9223372036854775807", "ok", "ok"),
        ("a.b:1|c|T", "ok", "bad_timestamp"),
        ("a.b:1|c|T12x", "ok", "bad_timestamp"),
        ("a.b:1|c|T-5", "ok", "bad_timestamp"),
        ("a.b:1|c|T9223372036854775808", "ok", "bad_timestamp"),
        ("a.b:1|c|T1|T0", "ok", "bad_timestamp"),
        // Tags and every other field: the agent reads or skips them without error.
        ("a.b:1|c|#a,,b", "ok", "ok"),
        ("a.b:1|c|#a|#b", "ok", "ok"),
        ("a.b:1|c||#a", "ok", "ok"),
        ("a.b:1|c|x:1", "ok", "ok"),
        ("a.b:1|c|c:", "ok", "ok"),
        ("a.b:1|c|card", "ok", "ok"),
        ("a.b:1|c|@0.5|@0.5", "ok", "ok"),
        // A line starting `_sc` is a service check to the agent.
        ("_sc:1|c", "ok", "bad_service_check"),
        ("_scale:1|c|#a", "ok", "bad_service_check"),
        ("_sc:x|0|", "ok", "ok"),
        // Service checks: a name and a status of 0-3; fields are never an error.
        ("_sc|db.ping|0", "ok", "ok"),
        ("_sc|db.ping|3|d:1656581400|h:db1|#env:prod,role:primary|m:timed out | retrying", "ok", "ok"),
        ("_sc|db.ping|1|m:x|#not:tags", "ok", "ok"),
        ("_sc|db.ping|0|d:soon|h:|x:1|#|c:a|c:b", "ok", "ok"),
        ("_sc|db.ping", "ok", "bad_service_check"),
        ("_sc|db.ping|4", "ok", "bad_service_check"),
        ("_sc|db.ping|ok", "ok", "bad_service_check"),
        ("_sc|db.ping|", "ok", "bad_service_check"),
        ("_sc|db.ping|00", "ok", "bad_service_check"),
        ("_sc||0", "empty_name", "empty_name"),
        // Events: the header (the scanner's); the agent ignores a bad field.
        ("_e{5,4}:title|text", "ok", "ok"),
        ("_e{5,9}:title|text|more|d:1656581400|h:web1|k:deploy|p:low|s:ci|t:warning|#env:prod", "ok", "ok"),
        ("_e{5,0}:title||p:normal", "ok", "ok"),
        ("_e{5,4}:title|text|p:urgent|t:fatal|d:x|z:1|#a,,b|p:low", "ok", "ok"),
        ("_e{11,4}:héllo wörld|text", "ok", "ok"),
        ("_e{9,4}:title|text", "bad_event_header", "bad_event_header"),
        ("_e{0,4}:|text", "empty_name", "empty_name"),
        // The scanner's own reasons hold in both modes.
        ("nocolon", "missing_colon", "missing_colon"),
        (":1|c", "empty_name", "empty_name"),
    ])
    func validation(_ line: String, _ loose: String, _ strict: String) throws {
        #expect(try verdict(line, .loose) == loose)
        #expect(try verdict(line, .strict) == strict)
    }

    /// The lines a review found strict treating unlike the Datadog agent (agent 7,
    /// `comp/dogstatsd/server/impl/parse*.go`, defaults: timestamps read): each now goes as
    /// the agent takes it.
    @Test("strict drops what the agent drops and forwards what it accepts", arguments: [
        // ParseInt then `ts < 1`: refused.
        ("a:1|c|T0", "bad_timestamp"),
        // ParseFloat's range error: refused.
        ("a:1e400|g", "bad_value"),
        // An empty field and an empty tags field are read without error.
        ("a:1|c|", "ok"),
        ("a:1|c|#", "ok"),
        // The sample rate is ParseFloat's.
        ("a:1|c|@1e-1", "ok"),
        // Packed values skip empty pieces (`21::22` is two).
        ("a:21::22|d", "ok"),
        // Hex floats are ParseFloat's too.
        ("a:0x1p-2|g", "ok"),
        // NaN parses, but the aggregator drops the sample: nothing of the line is kept.
        ("a:NaN|g", "bad_value"),
    ])
    func agentVerdicts(_ line: String, _ strict: String) throws {
        #expect(try verdict(line, .strict) == strict)
    }

    /// Every line of a datagram is counted once, as forwarded or dropped, and the forwarded
    /// ones keep their order.
    @Test("a strict datagram: good lines forwarded in order, bad ones counted by reason")
    func strictDatagram() throws {
        let relayed = try relayThrough(
            "a:1|c\nb:x|c\n_sc|c|0\n_e{1,1}:e|t\nc:1|c|@x\nd:2|g\n_e{9,1}:e|t\n", validation: .strict)
        #expect(relayed.lines[0] == ["a:1|c", "_sc|c|0", "_e{1,1}:e|t", "d:2|g"])
        #expect(relayed.counters[.linesReceived] == 7)
        #expect(relayed.counters[.linesForwarded] == 4)
        #expect(relayed.counters[.linesDroppedBadValue] == 1)
        #expect(relayed.counters[.linesDroppedBadSampleRate] == 1)
        #expect(relayed.counters[.linesDroppedBadEventHeader] == 1)
    }

    /// Events route by their title and service checks by their name, as a metric of that name
    /// does: the key is the title's or name's FNV-1a 64, jump-hashed over the backends.
    @Test("events by title, service checks by name", arguments: [
        ("_e{12,4}:deploy.start|text", "deploy.start"),
        ("_e{6,9}:backup|disk|full|#a:b", "backup"),
        ("_e{11,4}:héllo wörld|text", "héllo wör"),
        ("_sc|db.ping|2|#env:prod", "db.ping"),
        ("_sc|queue.lag|0", "queue.lag"),
        ("_sc|x", "x"),
    ])
    func dogStatsDRouting(_ line: String, _ key: String) throws {
        for backends in [3, 7, 16] {
            let relayed = try relayThrough(line, backends: backends)
            let expected = ReferenceRouting.jump(ReferenceRouting.fnv1a64(key.utf8), backends)
            #expect(relayed.lines[expected] == [line], "\(backends) backends")
        }
    }

    /// Many events of different titles no longer land on one backend (they did when routed by
    /// the literal `_e{5,4}`).
    @Test("events of many titles spread over the backends")
    func eventsSpread() throws {
        let datagram = (0..<200).map { index in
            let title = "title-\(index)"
            return "_e{\(title.utf8.count),4}:\(title)|text"
        }.joined(separator: "\n")
        let relayed = try relayThrough(datagram, backends: 4)
        #expect(relayed.lines.allSatisfy { $0.count > 20 }, "\(relayed.lines.map(\.count))")
        #expect(relayed.counters[.linesForwarded] == 200)
    }

    /// Tag lists and their permutations: every order routes where the reference key does.
    static let taggedLines: [(name: String, tags: [String], suffix: String)] = [
        ("api.req", ["env:prod", "svc:web", "az:b"], ":1|c"),
        ("api.req", ["b", "a", "a"], ":1|c|@0.5"),
        ("api.req", ["k:v", "k", "k:"], ":3|ms"),
        ("db.ping", ["role:primary", "env:prod"], ""),
        ("deploy", ["team:x", "env:prod", "a"], ""),
        ("api.req", ["z", "", "y"], ":1|c"),
        ("api.req", (0..<70).map { "t\($0):v" }, ":1|c"),
        ("api.req", (0..<64).map { "t\($0)" }, ":1|c"),
        ("api.req", ["env:prod", "env:prod", "svc:a"], ":1|c"),
        ("api.req", ["x", "x", "x", "x"], ":1|c"),
        ("api.req", (0..<32).map { "t\($0 % 8)" }, ":1|c"),
    ]

    /// The line for `name` with `tags` in the given order, in each form.
    static func line(_ name: String, _ tags: [String], _ suffix: String, form: Int) -> String {
        let field = "|#" + tags.joined(separator: ",")
        switch form {
        case 0: return name + (suffix.isEmpty ? ":1|c" : suffix) + field
        case 1: return "_sc|\(name)|0\(field)|m:msg"
        default: return "_e{\(name.utf8.count),3}:\(name)|txt\(field)"
        }
    }

    @Test("name+tags: a key independent of tag order, where the reference sends it",
          arguments: [HashMode.jump, .ketama, .etsy], [0, 1, 2])
    func nameAndTags(mode: HashMode, form: Int) throws {
        let backends = 5
        let ringRouter = mode == .jump
            ? nil : Router(backends: (1...backends).map { BackendAddress(host: "10.0.0.\($0)", port: 8125) }, hashMode: mode)
        var generator = SystemRandomNumberGenerator()
        for (name, tags, suffix) in Self.taggedLines {
            let key = DogStatsDReference.nameAndTagsKey(name: name, tags: tags)
            // A ring places the key by its md5 (the router's name path, held to the peers'
            // vectors in HashModeRoutingTests); jump by its FNV-1a 64.
            let expected = ringRouter?.backend(forName: String(decoding: key, as: UTF8.self))
                ?? ReferenceRouting.jump(ReferenceRouting.fnv1a64(key), backends)
            for round in 0..<4 {
                let order = round == 0 ? tags : tags.shuffled(using: &generator)
                let text = Self.line(name, order, suffix, form: form)
                let relayed = try relayThrough(text, backends: backends, hashMode: mode, hashKey: .nameAndTags)
                #expect(relayed.lines[expected] == [text], "\(mode) \(text)")
            }
        }
    }

    /// One series to the Datadog agent, one backend: its context key ignores repeated tags.
    @Test("name+tags: a repeated tag routes as one", arguments: [HashMode.jump, .ketama, .etsy])
    func repeatedTags(mode: HashMode) throws {
        for backends in [2, 7, 10] {
            for (once, repeated) in [
                ("api.req:1|c|#env:prod,svc:a", "api.req:1|c|#env:prod,env:prod,svc:a"),
                ("api.req:1|c|#svc:a,env:prod", "api.req:1|c|#env:prod,svc:a,svc:a,env:prod"),
                ("_sc|db|0|#a,b", "_sc|db|0|#b,a,b,a,a"),
            ] {
                let one = try relayThrough(once, backends: backends, hashMode: mode, hashKey: .nameAndTags)
                let two = try relayThrough(repeated, backends: backends, hashMode: mode, hashKey: .nameAndTags)
                let target = try #require(one.lines.firstIndex { !$0.isEmpty })
                #expect(two.lines[target] == [repeated], "\(mode) \(backends): \(repeated)")
            }
        }
    }

    @Test("name+tags: a line without tags routes as under --hash-key name", arguments: [
        "api.req:1|c", "api.req:1|c|@0.5", "_sc|db.ping|0", "_e{6,4}:deploy|text", "api.req:1|c|#",
    ])
    func untaggedAsName(_ line: String) throws {
        let byName = try relayThrough(line, backends: 9, hashKey: .name)
        let byNameAndTags = try relayThrough(line, backends: 9, hashKey: .nameAndTags)
        #expect(byName.lines == byNameAndTags.lines)
        #expect(byName.lines.joined().count == 1)
    }

    /// The Datadog agent keeps the last tags field of a line that carries two, so the key is
    /// made of that one: the line routes as the one field the agent reads would.
    @Test("name+tags: the last tags field keys the line", arguments: [
        ("api.req:1|c|#x,y|#b,a", "api.req:1|c|#a,b"),
        ("api.req:1|c|#x|@0.5|#a|T1", "api.req:1|c|#a"),
        ("api.req:1|c|#x|#", "api.req:1|c"),
        ("_sc|db|0|#x|m:down|#a", "_sc|db|0|#a"),
        ("_sc|db|0|m:down|#a", "_sc|db|0|#a"),
        ("_e{5,4}:title|text|#x|#a", "_e{5,4}:title|text|#a"),
        // The agent reads an event's fields from the second byte after its text, and a
        // metric's after its type.
        ("_e{11,4}:héllo wörld|text|#a", "_e{11,4}:héllo wör|text|#a"),
        ("api.req:1|#x", "api.req:1|c"),
    ])
    func lastTagsField(_ line: String, _ sameAs: String) throws {
        for mode in [HashMode.jump, .ketama] {
            for backends in [5, 11] {
                let two = try relayThrough(line, backends: backends, hashMode: mode, hashKey: .nameAndTags)
                let one = try relayThrough(sameAs, backends: backends, hashMode: mode, hashKey: .nameAndTags)
                let target = try #require(one.lines.firstIndex { !$0.isEmpty })
                #expect(two.lines[target] == [line], "\(mode) \(backends)")
            }
        }
    }

    @Test("name+tags under strict: bad lines still dropped, good ones keyed by name and tags")
    func strictNameAndTags() throws {
        let relayed = try relayThrough(
            "a:1|c|#y,x\na:1|c|#x,,y\na:1|c|#x,y|T0\n", backends: 7, validation: .strict, hashKey: .nameAndTags)
        let expected = ReferenceRouting.jump(ReferenceRouting.fnv1a64(Array("a|#x,y".utf8)), 7)
        #expect(relayed.lines[expected] == ["a:1|c|#y,x", "a:1|c|#x,,y"])
        #expect(relayed.counters[.linesDroppedBadTimestamp] == 1)
    }
}

@Suite("--validate and --hash-key options")
struct DogStatsDOptionTests {
    @Test("flags and file keys set the modes; the default is loose and name")
    func modes() throws {
        var none = ConfigFile()
        none.backends = [ConfigFile.Backend(address: "127.0.0.1:9")]
        let defaults = try ConfigFile.resolve(file: nil, flags: none, allowedCPUs: [0])
        #expect(defaults.validation == .loose && defaults.hashKey == .name)
        var flags = ConfigFile()
        flags.validate = "strict"
        flags.hashKey = "name+tags"
        flags.backends = [ConfigFile.Backend(address: "127.0.0.1:9")]
        let set = try ConfigFile.resolve(file: nil, flags: flags, allowedCPUs: [0])
        #expect(set.validation == .strict && set.hashKey == .nameAndTags)
        var file = ConfigFile()
        file.validate = "strict"
        file.hashKey = "name+tags"
        file.backends = [ConfigFile.Backend(address: "127.0.0.1:9")]
        let fromFile = try ConfigFile.resolve(file: file, flags: ConfigFile(), allowedCPUs: [0])
        #expect(fromFile.validation == .strict && fromFile.hashKey == .nameAndTags)
    }

    @Test("a bad value names the option", arguments: [
        ("validate", "strickt", "invalid --validate 'strickt': expected loose or strict"),
        ("hash-key", "tags", "invalid --hash-key 'tags': expected name or name+tags"),
    ])
    func badValue(_ key: String, _ value: String, _ message: String) {
        var flags = ConfigFile()
        if key == "validate" { flags.validate = value } else { flags.hashKey = value }
        #expect {
            try ConfigFile.resolve(file: nil, flags: flags, allowedCPUs: [0])
        } throws: { error in
            "\(error)".contains(message)
        }
    }

    @Test("both keys are restart-only")
    func restartOnly() {
        #expect(ConfigFile.key(named: "validate")?.reload == .restart)
        #expect(ConfigFile.key(named: "hash-key")?.reload == .restart)
    }
}
