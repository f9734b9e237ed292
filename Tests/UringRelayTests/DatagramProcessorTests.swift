@testable import RelayKernel
import Testing
@testable import UringRelay

@Suite("Datagram processor: parse, route, pack, count")
struct DatagramProcessorTests {
    /// Hands `text` to the processor as one whole received datagram.
    static func receive(_ text: String, into processor: inout DatagramProcessor) {
        var datagram = Array(text.utf8)
        datagram.withUnsafeMutableBytes { raw in
            processor.receive(.datagram(length: raw.count), UnsafeRawBufferPointer(raw).bytes, now: 0)
        }
    }

    /// Closes every batch, completes every packet as sent in full and returns what each backend
    /// got, its packets concatenated in order.
    static func flush(_ processor: inout DatagramProcessor) -> [Int: String] {
        processor.assembler.closeAll()
        var byBackend: [Int: String] = [:]
        while let slot = processor.assembler.nextReady() {
            byBackend[processor.assembler.pool.backend(of: slot), default: ""] += processor.assembler.pool.withBytes(ofSlot: slot) {
                $0.withUnsafeBytes { String(decoding: $0, as: UTF8.self) }
            }
            let outcome = processor.sendCompleted(slot: slot, result: Int32(processor.assembler.pool.length(of: slot)))
            #expect(outcome.isAccepted)
        }
        return byBackend
    }

    @Test("valid lines go to the backend their name hashes to; junk is counted by reason")
    func routesAndCounts() throws {
        var processor = try DatagramProcessor(router: Router(backendCount: 3), packetBytes: 1400, maxDatagramBytes: 8192)
        Self.receive("foo:1|c\nbar:2|c|#tag:x\r\n\nnoval\n:1|c\na\u{0}:1|c\nstatsrelay.statsProcessed:3|g\n", into: &processor)
        processor.receive(.truncated(fullLength: 9000), [UInt8]().span.bytes, now: 0)
        let byBackend = Self.flush(&processor)
        #expect(byBackend == [0: "bar:2|c|#tag:x\n", 1: "foo:1|c\n", 2: "statsrelay.statsProcessed:3|g\n"])
        let counters = processor.counters
        #expect(counters[.datagramsReceived] == 1)
        #expect(counters[.datagramsTruncated] == 1)
        #expect(counters[.linesReceived] == 6)
        #expect(counters[.linesForwarded] == 3)
        #expect(counters[.emptyLines] == 1)
        #expect(counters[.linesDroppedMissingColon] == 1)
        #expect(counters[.linesDroppedEmptyName] == 1)
        #expect(counters[.linesDroppedNulByte] == 1)
    }

    @Test("a completed send frees its slot and says what it carried; a failed one is not accepted")
    func sendFailure() throws {
        var processor = try DatagramProcessor(router: Router(backendCount: 1), packetBytes: 1400, maxDatagramBytes: 8192)
        Self.receive("a:1|c\nb:1|c", into: &processor)
        processor.assembler.closeAll()
        let ready = processor.assembler.nextReady()
        let slot = try #require(ready)
        let free = processor.assembler.pool.freeCount
        let outcome = processor.sendCompleted(slot: slot, result: -111)  // ECONNREFUSED
        #expect(outcome == SendOutcome(backend: 0, lines: 2, bytes: 12, result: -111))
        #expect(!outcome.isAccepted)
        #expect(processor.assembler.pool.freeCount == free + 1)
    }

    @Test("each backend gets its lines in datagram order, across junk lines and repeated names")
    func orderPerBackend() throws {
        // Built from names that repeat on consecutive lines (a cold cache sees the same name
        // twice in a row) and junk between valid lines; the expected packets come from routing
        // each valid line on its own, in order.
        var processor = try DatagramProcessor(router: Router(backendCount: 3), packetBytes: 1400, maxDatagramBytes: 8192)
        var text = ""
        var expected = [String](repeating: "", count: 3)
        for index in 0..<30 {
            let name = "order.metric.\(index / 2)"
            let line = "\(name):\(index)|c"
            text += line + "\n"
            expected[Router(backendCount: 3).backend(forName: name)] += line + "\n"
            if index % 7 == 3 { text += "junk-without-colon\n\n:empty-name|c\n" }
        }
        Self.receive(text, into: &processor)
        let byBackend = Self.flush(&processor)
        #expect((0..<3).map { byBackend[$0, default: ""] } == expected)
        #expect(processor.counters[.linesForwarded] == 30)
        #expect(processor.counters[.linesDroppedMissingColon] == 4)
        #expect(processor.counters[.linesDroppedEmptyName] == 4)
        #expect(processor.counters[.emptyLines] == 4)
    }

    @Test(
        "a line found in the cache by its name's hash goes where the router sends it, cached or not, with every backend up or one down, under every hash mode",
        arguments: HashMode.allCases)
    func nameHashProbesRouteAsTheRouter(mode: HashMode) throws {
        let router = Router(backends: (1...5).map { BackendAddress(host: "10.0.0.\($0)", port: 8125) }, hashMode: mode)
        var processor = try DatagramProcessor(router: router, packetBytes: 1400, maxDatagramBytes: 8192)
        // Names of every length from 1 to 40 bytes (each of the hash's read shapes), then longer.
        let names = (1...40).map { String(repeating: "n", count: $0 - 1) + "x" } + (0..<2_000).map { "probe.\($0 * 7_919).count" }
        for round in 0..<4 {
            // Round 0 fills the cache; rounds 1 and 2 find every name in it; in round 2 backend
            // 1 is down (a cached line is then routed by its FNV-1a 64); round 3 is up again.
            processor.router.setDown(1, round == 2)
            var expected: [Int: String] = [:]
            for chunk in stride(from: 0, to: names.count, by: 40) {
                var text = ""
                for name in names[chunk..<min(chunk + 40, names.count)] {
                    text += "\(name):\(round)|c\n"
                    switch processor.router.route(name: name) {
                    case .send(let backend), .hold(let backend), .rehash(_, let backend): expected[backend, default: ""] += "\(name):\(round)|c\n"
                    case .drop: break
                    }
                }
                Self.receive(text, into: &processor)
            }
            #expect(Self.flush(&processor) == expected, "round \(round)")
            #expect(expected[1] == nil || round != 2, "round 2 must move the lines off backend 1")
        }
        #expect(processor.counters[.linesForwarded] == UInt64(4 * names.count))
    }

    @Test(
        "a name whose primary is cached follows the health view: rehashed, held or dropped while its backend is down, back on recovery",
        arguments: DownPolicy.allCases)
    func cachedPrimaryFollowsHealth(policy: DownPolicy) throws {
        var processor = try DatagramProcessor(
            router: Router(backendCount: 3, policy: policy), packetBytes: 1400, maxDatagramBytes: 8192)
        let names = (0..<24).map { "health.cached.\($0)" }
        let text = names.map { "\($0):1|c\n" }.joined()
        Self.receive(text, into: &processor)  // every primary now cached
        let healthy = Self.flush(&processor)
        let dead = Router(backendCount: 3).backend(forName: names[0])
        let onDead = names.filter { Router(backendCount: 3).backend(forName: $0) == dead }
        #expect(onDead.count < names.count, "some names must stay on live backends")

        processor.router.setDown(dead, true)
        Self.receive(text, into: &processor)
        // Where each line must go, from the router alone (no cache).
        var expected: [Int: String] = [:]
        for name in names {
            switch processor.router.route(name: name) {
            case .send(let backend), .hold(let backend), .rehash(_, let backend): expected[backend, default: ""] += "\(name):1|c\n"
            case .drop: break
            }
        }
        #expect(Self.flush(&processor) == expected)
        switch policy {
        case .rehash:
            #expect(expected[dead] == nil)
            #expect(processor.counters[.linesRehashedAway, backend: dead] == UInt64(onDead.count))
        case .hold:
            #expect(expected == healthy)
        case .drop:
            #expect(expected[dead] == nil)
            #expect(processor.counters[.linesDroppedBackendDown, backend: dead] == UInt64(onDead.count))
        }

        processor.router.setDown(dead, false)
        Self.receive(text, into: &processor)
        #expect(Self.flush(&processor) == healthy)
    }
}
