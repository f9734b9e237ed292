@testable import BenchKit
import Testing

/// The line validator accepts the generator's format and nothing else.
@Suite struct StatsDLineTests {
    @Test(arguments: [
        "api.requests.host-12.status_200:1|c",
        "api.requests.host-12.status_200:7|c|@0.5",
        "db.query.users.p3.latency:12.5|ms|@0.1",
        "queue.depth.q7:42|g",
        "queue.depth.q7:-3|g",
        "queue.depth.q7:+3|g",
        "users.unique.page-9:u4711|s",
        "http.req.route-5:1|c|#env:prod,svc:web",
        "http.latency.route-6:3.2|ms|@0.5|#env:prod,svc:api,region:eu-west-1",
        "x:1|h",
        "x:1|d|#flag",
        "ABCDEFGH_xyz-0123456789.abcdefghijklmnopqrstuvwxyz:1|c",
        "abcdefg-:1|c",
    ])
    func accepts(_ line: String) {
        #expect(valid(line))
    }

    @Test(arguments: [
        "",
        ":1|c",
        "name",
        "name:",
        "name:1",
        "name:1|",
        "name:|c",
        "name:1|x",
        "name:1|msx",
        "name:abc|c",
        "name:-1|c",
        "name:1.|ms",
        "name:1|c|",
        "name:1|c|@",
        "name:1|c|@x",
        "name:1|c|@0.1|@0.1",
        "name:1|c|#",
        "name:1|c|#env:",
        "name:1|c|#env:prod,",
        "name:1|c|#env:prod|@0.1",
        "name:1|c|?x",
        "na me:1|c",
        "name:u 1|s",
        "name:1|c\r",
        "abcdefg/:1|c",
        "abcdefgh/ijklmnop:1|c",
        "abcdefg\u{e9}:1|c",
        "api.requests.host 12:1|c",
        "abc@efgh:1|c",
        "abc[efgh:1|c",
        "abc`efgh:1|c",
        "abc{efgh:1|c",
        "abcdefghijklmno,:1|c",
    ])
    func rejects(_ line: String) {
        #expect(!valid(line))
    }

    @Test func wordCheckAgreesWithByteCheck() {
        for value in 0...255 {
            let byte = UInt8(value)
            let scalar = Unicode.Scalar(byte)
            let expected = value < 128 && (scalar.properties.isAlphabetic || ("0"..."9").contains(scalar) || "-._".unicodeScalars.contains(scalar))
            #expect(StatsDLine.isNameByte(byte) == expected, "byte \(value)")
            for lane in 0..<8 {
                var bytes = [UInt8](repeating: UInt8(ascii: "a"), count: 8)
                bytes[lane] = byte
                let word = bytes.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
                #expect(StatsDLine.allNameBytes(word) == StatsDLine.isNameByte(byte), "byte \(value) lane \(lane)")
            }
        }
    }

    @Test func tallyCountsLinesAndTerminators() {
        var tally = LineTally()
        scan("a:1|c\nb:2|g\n", into: &tally)
        scan("a:1|c\nb:2|g", into: &tally)
        scan("a:1|c\n\nbad\n", into: &tally)
        scan("", into: &tally)
        #expect(tally.lines == 7)
        #expect(tally.malformed == 2)
        #expect(tally.unterminated == 1)
        #expect(tally.empty == 1)
    }

    @Test(arguments: PackingMode.allCases)
    func generatedDatagramsAreValidAndAccounted(_ mode: PackingMode) {
        let catalog = MetricCatalog(count: 1000, seed: 7)
        let pool = DatagramPool(catalog: catalog, mode: mode, count: 500, size: 1400, seed: 7)
        #expect(pool.count == 500)
        var tally = LineTally()
        for index in 0..<pool.count {
            let datagram = Array(pool.bytes[pool.offsets[index]..<pool.offsets[index + 1]])
            #expect(datagram.count <= 1400)
            #expect(datagram.last == UInt8(ascii: "\n"))
            datagram.withUnsafeBytes { _ = tally.scan($0) }
        }
        #expect(tally.malformed == 0)
        #expect(tally.unterminated == 0)
        #expect(tally.lines == pool.linePrefix[pool.count])
        #expect(tally.checksum == pool.checksumPrefix[pool.count])
        if mode == .line {
            #expect(tally.lines == 500)
        } else {
            #expect(tally.lines > 500 * 20)
        }
        let twice = pool.totals(forDatagrams: 2 * pool.count + 3)
        #expect(twice.lines == 2 * pool.linePrefix[pool.count] + pool.linePrefix[3])
    }

    @Test func sameSeedSameBytes() {
        let first = DatagramPool(catalog: MetricCatalog(count: 100, seed: 3), mode: .packed, count: 20, size: 1400, seed: 3)
        let second = DatagramPool(catalog: MetricCatalog(count: 100, seed: 3), mode: .packed, count: 20, size: 1400, seed: 3)
        #expect(first.bytes == second.bytes)
    }

    @Test(arguments: ["127.0.0.1:8125", "127.1.2.3:1"])
    func acceptsLoopback(_ text: String) throws {
        _ = try LoopbackEndpoint(parsing: text)
    }

    @Test(arguments: ["10.0.0.1:8125", "0.0.0.0:8125", "8.8.8.8:53", "localhost:8125", "127.0.0.1", "127.0.0.1:x", "::1:8125"])
    func refusesOthers(_ text: String) {
        #expect(throws: BenchError.self) { try LoopbackEndpoint(parsing: text) }
    }

    /// Validates `line` through a buffer, as the sink does.
    private func valid(_ line: String) -> Bool {
        Array(line.utf8).withUnsafeBytes { StatsDLine.isValid($0) }
    }

    /// Scans `datagram` into `tally`.
    private func scan(_ datagram: String, into tally: inout LineTally) {
        Array(datagram.utf8).withUnsafeBytes { _ = tally.scan($0) }
    }
}
