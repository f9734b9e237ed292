@testable import RelayKernel
import RoutingReference
import Testing
@testable import UringRelay

/// The mirror sample and routing written again from their documented definitions
/// (docs/operations.md#mirroring), so the expectations never come from the code under test;
/// FNV-1a 64 and the jump hash are `ReferenceRouting`'s.
enum MirrorReference {
    /// The metric name of a StatsD line: the bytes before the first `:`.
    static func name(_ line: String) -> String { String(line.prefix { $0 != ":" }) }

    /// splitmix64's finaliser of the FNV-1a 64 hash XOR ASCII `mirror_s`.
    static func sampleValue(_ name: String) -> UInt64 {
        var z = ReferenceRouting.fnv1a64(name) ^ 0x6d69_7272_6f72_5f73
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }

    /// Whether `name` is mirrored at `rate`: its sample value is below `rate × 2⁶⁴`.
    static func isSampled(_ name: String, rate: Double) -> Bool {
        rate >= 1 || Double(sampleValue(name)) < rate * 18_446_744_073_709_551_616.0
    }
}

@Suite("Mirror pool: a stable sample of names, copies packed apart from the primary's")
struct MirrorTests {
    /// The processor's counters, copied out (`#expect` cannot look into a non-copyable value).
    func counters(_ processor: borrowing DatagramProcessor) -> RelayCounters { processor.counters }

    static let names = (0..<100_000).map { "svc-\($0 % 97).requests.\($0)" }

    @Test("the sample is the documented function of the name's hash", arguments: [0.01, 0.1, 0.5, 0.9, 1.0])
    func sampleMatchesDefinition(_ rate: Double) {
        let sample = MirrorSample(rate: rate)
        // Values exactly at the boundary are 2⁻⁶⁴ likely: none among these names.
        let mismatches = Self.names.prefix(5_000).filter { sample.contains(key: $0) != MirrorReference.isSampled($0, rate: rate) }
        #expect(mismatches.isEmpty, "\(mismatches.prefix(5))")
    }

    @Test("over 100 000 names the share mirrored is RATE, within four standard deviations, on every primary backend alike",
          arguments: [0.01, 0.1, 0.5, 0.9])
    func shareNearRate(_ rate: Double) {
        let sample = MirrorSample(rate: rate)
        let backends = 4
        var total = 0
        var names = Array(repeating: 0, count: backends)
        var sampled = Array(repeating: 0, count: backends)
        for name in Self.names {
            let primary = ReferenceRouting.jump(ReferenceRouting.fnv1a64(name), backends)
            names[primary] += 1
            if sample.contains(key: name) {
                total += 1
                sampled[primary] += 1
            }
        }
        func within(_ count: Int, of n: Int) -> Bool {
            let deviation = (Double(n) * rate * (1 - rate)).squareRoot()
            return abs(Double(count) - Double(n) * rate) <= 4 * deviation
        }
        #expect(within(total, of: Self.names.count), "\(total) of \(Self.names.count) at \(rate)")
        for backend in 0..<backends {
            // Independent of the primary backend: each one's names are sampled at RATE too.
            #expect(within(sampled[backend], of: names[backend]), "backend \(backend): \(sampled[backend]) of \(names[backend])")
        }
    }

    @Test("rate 1 mirrors every name; a vanishing rate keeps only the one value 0")
    func rateEdges() {
        let all = MirrorSample(rate: 1)
        #expect(all.threshold == .max)
        #expect(Self.names.prefix(1_000).allSatisfy { all.contains(key: $0) })
        #expect(MirrorSample(rate: 1e-30).threshold == 0)
    }

    /// Hands `text` to the processor as one received datagram.
    static func receive(_ text: String, into processor: inout DatagramProcessor) {
        var datagram = Array(text.utf8)
        datagram.withUnsafeMutableBytes { raw in
            processor.receive(.datagram(length: raw.count), UnsafeRawBufferPointer(raw).bytes, now: 0)
        }
    }

    /// Closes every batch, completes every packet as sent and returns the lines each backend
    /// index got (mirror backends past the primary's).
    static func flush(_ processor: inout DatagramProcessor) -> [Int: [String]] {
        processor.assembler.closeAll()
        var byBackend: [Int: [String]] = [:]
        while let slot = processor.assembler.nextReady() {
            let text = processor.assembler.pool.withBytes(ofSlot: slot) { $0.withUnsafeBytes { String(decoding: $0, as: UTF8.self) } }
            byBackend[processor.assembler.pool.backend(of: slot), default: []] += text.split(separator: "\n").map(String.init)
            _ = processor.sendCompleted(slot: slot, result: Int32(processor.assembler.pool.length(of: slot)))
        }
        return byBackend
    }

    static func mirror(backends: Int, mode: HashMode = .jump, rate: Double) throws -> MirrorPool {
        let addresses = (0..<backends).map { SocketAddress(numericHost: "127.0.0.1", port: UInt16(9_100 + $0))! }
        return MirrorPool(
            backends: try addresses.map { try BackendAddress(parsing: $0.description) }, addresses: addresses, hashMode: mode, rate: rate)
    }

    @Test("each routed line goes to its primary backend once and, when sampled, once to its mirror backend, byte-exact",
          arguments: [1.0, 0.5])
    func duplicates(_ rate: Double) throws {
        var processor = try DatagramProcessor(
            router: Router(backendCount: 2), packetBytes: 1400, maxDatagramBytes: 8192, mirror: try Self.mirror(backends: 3, rate: rate))
        let lines = (0..<300).map { "dup.\($0):\($0)|c|#a:b" }
        for start in stride(from: 0, to: lines.count, by: 10) {
            Self.receive(lines[start..<start + 10].joined(separator: "\n") + "\nbad-line\n", into: &processor)
        }
        let byBackend = Self.flush(&processor)
        let mirrored = lines.filter { MirrorReference.isSampled(MirrorReference.name($0), rate: rate) }
        for backend in 0..<2 {
            let expected = lines.filter { ReferenceRouting.jump(ReferenceRouting.fnv1a64(MirrorReference.name($0)), 2) == backend }
            #expect(byBackend[backend] ?? [] == expected, "primary \(backend)")
        }
        for mirror in 0..<3 {
            let expected = mirrored.filter { ReferenceRouting.jump(ReferenceRouting.fnv1a64(MirrorReference.name($0)), 3) == mirror }
            #expect(byBackend[2 + mirror] ?? [] == expected, "mirror \(mirror)")
        }
        #expect(counters(processor)[.linesForwarded] == UInt64(lines.count))
        #expect(counters(processor)[.mirrorLines] == UInt64(mirrored.count))
        #expect(counters(processor)[.linesDroppedMissingColon] == 30)
        #expect(counters(processor)[.mirrorLinesDroppedNoSendBuffer] == 0)
        if rate < 1 { #expect(mirrored.count > 100 && mirrored.count < 200, "a sample, not all or none") }
    }

    @Test("a name is always or never mirrored, whatever datagram it comes in")
    func stablePerName() throws {
        var processor = try DatagramProcessor(
            router: Router(backendCount: 1), packetBytes: 1400, maxDatagramBytes: 8192, mirror: try Self.mirror(backends: 1, rate: 0.3))
        let names = (0..<40).map { "stable.\($0)" }
        var mirrored: [String] = []
        for round in 0..<25 {
            Self.receive(names.shuffled().map { "\($0):\(round)|ms" }.joined(separator: "\n"), into: &processor)
            if round % 5 == 4 { mirrored += Self.flush(&processor)[1] ?? [] }
        }
        var copies: [String: Int] = [:]
        for name in names { copies[name] = 0 }
        for line in mirrored { copies[MirrorReference.name(line), default: 0] += 1 }
        // Each name in all 25 rounds' copies or in none.
        #expect(copies.values.allSatisfy { $0 == 0 || $0 == 25 }, "\(copies)")
        #expect(copies.values.contains(0) && copies.values.contains(25))
        #expect(counters(processor)[.mirrorLines] == UInt64(mirrored.count))
    }

    @Test("a mirror whose sends never complete loses its own lines, counted; the primary takes every datagram and loses none")
    func stuckMirror() throws {
        var processor = try DatagramProcessor(
            router: Router(backendCount: 2), packetBytes: 64, maxDatagramBytes: 512, mirror: try Self.mirror(backends: 1, rate: 1))
        let mirrorSlots = processor.assembler.mirrorSlots
        #expect(mirrorSlots > 0)
        var sent = 0
        var primaryLines = 0
        var stuck: [Int] = []
        for round in 0..<(2 * mirrorSlots) {
            let canAccept = processor.assembler.canAcceptDatagram
            #expect(canAccept, "round \(round)")
            let text = (0..<4).map { "stuck.\(round).\($0):1|c" }.joined(separator: "\n")
            Self.receive(text, into: &processor)
            sent += 4
            processor.assembler.closeAll()
            while let slot = processor.assembler.nextReady() {
                if processor.assembler.isMirror(processor.assembler.pool.backend(of: slot)) {
                    stuck.append(slot)  // never completes
                } else {
                    primaryLines += processor.sendCompleted(slot: slot, result: Int32(processor.assembler.pool.length(of: slot))).lines
                }
            }
        }
        #expect(primaryLines == sent)
        #expect(counters(processor)[.linesForwarded] == UInt64(sent))
        #expect(counters(processor)[.linesDroppedNoSendBuffer] == 0)
        #expect(stuck.count == mirrorSlots)
        #expect(counters(processor)[.mirrorLinesDroppedNoSendBuffer] > 0)
        #expect(counters(processor)[.mirrorLines] + processor.counters[.mirrorLinesDroppedNoSendBuffer] == UInt64(sent))
        // Once the mirror's sends complete, its slots come back.
        for slot in stuck { _ = processor.sendCompleted(slot: slot, result: 0) }
        let free = processor.assembler.mirrorSlotsFree
        #expect(free == mirrorSlots)
    }

    @Test("without a mirror nothing is set aside for one")
    func noMirror() throws {
        let processor = try DatagramProcessor(router: Router(backendCount: 2), packetBytes: 1400, maxDatagramBytes: 8192)
        let (mirroring, mirrorSlots, capacity) = (processor.isMirroring, processor.assembler.mirrorSlots, processor.assembler.pool.capacity)
        #expect(!mirroring)
        #expect(mirrorSlots == 0)
        let sizing = RingSizing(receiveBuffers: 16, packetBytes: 1400, maxLineBytes: 8192, backendCount: 2)
        #expect(capacity == sizing.sendSlots)
    }

    @Test("the mirror's sockets follow the primary's, their identities marked mirror/")
    func sendPool() throws {
        let primary = BackendPool(
            backends: [try BackendAddress(parsing: "127.0.0.1:9100")], addresses: [SocketAddress(numericHost: "127.0.0.1", port: 9_100)!],
            policy: .rehash)
        let joined = primary.appendingMirror(try Self.mirror(backends: 2, rate: 1))
        #expect(joined.identities == ["127.0.0.1:9100", "mirror/127.0.0.1:9100", "mirror/127.0.0.1:9101"])
        #expect(joined.addresses.count == 3)
        #expect(primary.appendingMirror(nil) == primary)
    }

    @Test("mirror options: a bad value is refused naming the option", arguments: [
        (["--mirror-sample", "0"], "--mirror-sample"),
        (["--mirror-sample", "1.5"], "--mirror-sample"),
        (["--mirror-sample", "half"], "--mirror-sample"),
        (["--mirror-hash", "md5"], "--mirror-hash"),
        (["--mirror", "nohost"], "--mirror"),
        (["--mirror", "127.0.0.1:9=2"], "--mirror"),
        (["--mirror", "127.0.0.1:9,127.0.0.1:9"], "--mirror"),
    ])
    func optionErrors(_ arguments: [String], _ flag: String) throws {
        var flags = ConfigFile()
        flags.backends = [ConfigFile.Backend(address: "127.0.0.1:9")]
        switch arguments[0] {
        case "--mirror-sample": flags.mirrorSample = arguments[1]
        case "--mirror-hash": flags.mirrorHash = arguments[1]
        default: flags.mirror = arguments[1].split(separator: ",").map(String.init)
        }
        do {
            _ = try ConfigFile.resolve(file: nil, flags: flags, allowedCPUs: [0])
            Issue.record("accepted \(arguments)")
        } catch let error as ConfigurationError {
            #expect(error.argument == flag, "\(error)")
        }
    }

    @Test("mirror keys in the file: read, rendered back, and a restart to change")
    func fileKeys() throws {
        let file = try ConfigFile.parse("backends: [127.0.0.1:9]\nmirror: [127.0.0.1:10, 127.0.0.1:11]\nmirror-hash: ketama\nmirror-sample: 0.25\n", source: "t.yaml")
        let configuration = try ConfigFile.resolve(file: file, flags: ConfigFile(), allowedCPUs: [0])
        #expect(configuration.mirror.map(\.description) == ["127.0.0.1:10", "127.0.0.1:11"])
        #expect(configuration.mirrorHashMode == .ketama)
        #expect(configuration.mirrorSample == 0.25)
        #expect(["mirror", "mirror-hash", "mirror-sample"].allSatisfy { ConfigFile.key(named: $0)?.reload == .restart })
    }

    @Test("a reload that changes the mirror keeps the running one and says it needs a restart")
    func reloadKeepsMirror() throws {
        var running = RelayConfiguration(backends: [try BackendAddress(parsing: "127.0.0.1:9")])
        running.mirror = [try BackendAddress(parsing: "127.0.0.1:10")]
        var candidate = running
        candidate.mirror = [try BackendAddress(parsing: "127.0.0.1:11")]
        candidate.mirrorHashMode = .etsy
        candidate.mirrorSample = 0.5
        let plan = ConfigFileReload(running: running, candidate: candidate, holdBytesInUse: 0)
        #expect(plan.changes.map(\.key) == ["mirror", "mirror-hash", "mirror-sample"])
        #expect(plan.changes.allSatisfy { !$0.applied && $0.reason?.contains("needs a restart") == true })
        #expect(plan.result == running)
    }
}
