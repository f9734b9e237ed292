@testable import RelayKernel
import Testing
@testable import UringRelay

/// Packs `lines` for `backend`s and returns every packet made ready, as text, in order; with
/// `openBatchFirst`, as the datagram processor does: `appendToOpenBatch` first, `append` when
/// that packs nothing.
func pack(
    _ lines: [(String, Int)], backends: Int = 2, packetBytes: Int, maxLine: Int = 8192, closeAll: Bool = true,
    openBatchFirst: Bool = false
) throws -> [(backend: Int, text: String)] {
    var assembler = try BatchAssembler(backendCount: backends, packetBytes: packetBytes, maxLineBytes: maxLine)
    var packets: [(Int, String)] = []
    func drain() {
        while let slot = assembler.nextReady() {
            let text = assembler.pool.withBytes(ofSlot: slot) { bytes in
                bytes.withUnsafeBytes { String(decoding: $0, as: UTF8.self) }
            }
            packets.append((assembler.pool.backend(of: slot), text))
            _ = assembler.completeSend(slot)
        }
    }
    for (line, backend) in lines {
        var bytes = Array(line.utf8)
        let appended = bytes.withUnsafeMutableBytes { buffer in
            let line = UnsafeRawBufferPointer(buffer).bytes
            return (openBatchFirst && assembler.appendToOpenBatch(line, of: backend)) || assembler.append(line, to: backend, now: 0)
        }
        #expect(appended)
        drain()
    }
    if closeAll { assembler.closeAll() }
    drain()
    let pending = assembler.hasPendingBatches
    let allFree = assembler.pool.freeCount == assembler.pool.capacity
    #expect(!pending)
    #expect(allFree)
    return packets
}

@Suite("Batch assembler")
struct BatchAssemblerTests {
    @Test("lines are packed up to the packet length, each followed by a newline, never more (a line too long for it goes alone, without one)",
          arguments: [16, 64, 100, 1400, 8192], [false, true])
    func packingLimit(_ packetBytes: Int, openBatchFirst: Bool) throws {
        let lines = (0..<500).map { ("metric.\($0 % 37).name:\($0)|c", $0 % 2) }
        let packets = try pack(lines, packetBytes: packetBytes, openBatchFirst: openBatchFirst)
        for packet in packets {
            #expect(!packet.text.isEmpty)
            let packetLines = packet.text.split(separator: "\n")
            #expect(packet.text.hasSuffix("\n") || (packetLines.count == 1 && packet.text.utf8.count >= packetBytes))
            #expect(packet.text.utf8.count <= packetBytes || packetLines.count == 1)
        }
        // Every line arrives once, in order, at its backend.
        for backend in 0..<2 {
            let sent = lines.filter { $0.1 == backend }.map(\.0)
            let received = packets.filter { $0.backend == backend }.flatMap { $0.text.split(separator: "\n").map(String.init) }
            #expect(received == sent)
        }
    }

    @Test("a packet is filled before it is sent: the next line would not have fitted")
    func fillsPackets() throws {
        let lines = (0..<200).map { ("m\($0 % 10):\($0)|c", 0) }
        let packets = try pack(lines, backends: 1, packetBytes: 100)
        for (packet, next) in zip(packets, packets.dropFirst()) {
            let firstOfNext = next.text.split(separator: "\n")[0]
            #expect(packet.text.utf8.count + firstOfNext.utf8.count + 1 > 100)
        }
    }

    @Test("a line longer than the packet length goes alone, without its newline, after the batch before it")
    func oversizeLine() throws {
        let long = "long:" + String(repeating: "9", count: 150) + "|g"
        let packets = try pack([("a:1|c", 0), (long, 0), ("b:2|c", 0)], backends: 1, packetBytes: 64)
        #expect(packets.map(\.text) == ["a:1|c\n", long, "b:2|c\n"])
    }

    @Test("a line exactly filling the packet (with its newline) is packed, one byte more is alone without its newline",
          arguments: [false, true])
    func exactFit(openBatchFirst: Bool) throws {
        let exact = "e:" + String(repeating: "1", count: 61)  // 63 bytes + "\n" = 64
        #expect(try pack([(exact, 0)], backends: 1, packetBytes: 64, openBatchFirst: openBatchFirst).map(\.text) == [exact + "\n"])
        let over = exact + "2"
        #expect(
            try pack([("x:1|c", 0), (over, 0)], backends: 1, packetBytes: 64, openBatchFirst: openBatchFirst).map(\.text)
                == ["x:1|c\n", over])
    }

    @Test("the open-batch path packs a line only into its backend's open batch, and only where the line and its newline fit; otherwise it packs nothing")
    func openBatchPath() throws {
        var assembler = try BatchAssembler(backendCount: 2, packetBytes: 16, maxLineBytes: 8192)
        func appendToOpen(_ text: String, _ backend: Int) -> Bool {
            var bytes = Array(text.utf8)
            return bytes.withUnsafeMutableBytes { assembler.appendToOpenBatch(UnsafeRawBufferPointer($0).bytes, of: backend) }
        }
        func append(_ text: String, _ backend: Int) -> Bool {
            var bytes = Array(text.utf8)
            return bytes.withUnsafeMutableBytes { assembler.append(UnsafeRawBufferPointer($0).bytes, to: backend, now: 0) }
        }
        #expect(!appendToOpen("a:1|c", 0))  // no batch open
        #expect(append("a:1|c", 0))  // opens it: 6 bytes
        #expect(appendToOpen("b:22|c", 0))  // 13
        #expect(!appendToOpen("c:1|c", 1))  // backend 1 has none open
        #expect(!appendToOpen("cc:4", 0))  // 13 + 5 > 16
        #expect(appendToOpen("c:", 0))  // 13 + 3 = 16: exactly full
        #expect(!appendToOpen("d", 0))
        #expect(assembler.nextReady() == nil)  // the path never closes a batch
        assembler.closeAll()
        var packets: [(Int, String)] = []
        while let slot = assembler.nextReady() {
            let text = assembler.pool.withBytes(ofSlot: slot) { bytes in
                bytes.withUnsafeBytes { String(decoding: $0, as: UTF8.self) }
            }
            packets.append((assembler.pool.backend(of: slot), text))
            #expect(assembler.completeSend(slot).lines == 3)
        }
        #expect(packets.map(\.0) == [0])
        #expect(packets.map(\.1) == ["a:1|c\nb:22|c\nc:\n"])
    }

    @Test("nothing is sent for a backend without lines, and no packet is empty")
    func noEmptyPackets() throws {
        let packets = try pack([("only:1|c", 1)], backends: 3, packetBytes: 1400)
        #expect(packets.count == 1)
        #expect(packets[0].backend == 1)
    }

    @Test("batches are closed once the flush interval has passed since their first line")
    func flushInterval() throws {
        var assembler = try BatchAssembler(backendCount: 2, packetBytes: 1400, maxLineBytes: 8192)
        var line = Array("a:1|c".utf8)
        _ = line.withUnsafeMutableBytes { assembler.append(UnsafeRawBufferPointer($0).bytes, to: 0, now: 1_000) }
        _ = line.withUnsafeMutableBytes { assembler.append(UnsafeRawBufferPointer($0).bytes, to: 1, now: 5_000) }
        let firstDeadline = assembler.nextDeadline(interval: 10_000)
        #expect(firstDeadline == 11_000)
        assembler.closeExpired(now: 10_999, interval: 10_000)
        let early = assembler.nextReady()
        #expect(early == nil)
        assembler.closeExpired(now: 11_000, interval: 10_000)
        let due = assembler.nextReady()
        let first = try #require(due)
        let backend = assembler.pool.backend(of: first)
        #expect(backend == 0)
        let more = assembler.nextReady()
        #expect(more == nil)
        let secondDeadline = assembler.nextDeadline(interval: 10_000)
        #expect(secondDeadline == 15_000)
        // A later line does not extend the deadline of a batch already open.
        _ = line.withUnsafeMutableBytes { assembler.append(UnsafeRawBufferPointer($0).bytes, to: 1, now: 14_000) }
        let unchanged = assembler.nextDeadline(interval: 10_000)
        #expect(unchanged == 15_000)
    }

    @Test("the reserve covers the worst datagram: appending never runs out of slots midway",
          arguments: [2, 16, 100, 1400])
    func reserveSuffices(_ packetBytes: Int) throws {
        let maxLine = 8192
        var assembler = try BatchAssembler(backendCount: 3, packetBytes: packetBytes, maxLineBytes: maxLine)
        // Hold every slot but the reserve, as if sends were slow.
        var held: [Int] = []
        while assembler.pool.freeCount > assembler.reserveSlots { held.append(assembler.pool.acquire(for: 0)!) }
        let accepts = assembler.canAcceptDatagram
        #expect(accepts)
        // Lines just over half a packet close a batch each; tiny lines fill the rest.
        let half = max(1, packetBytes / 2)
        var used = 0
        var index = 0
        while used < maxLine {
            let length = index % 3 == 2 ? 1 : min(half, maxLine - used)
            var line = Array(repeating: UInt8(ascii: "x"), count: max(1, length - 1))
            let ok = line.withUnsafeMutableBytes { assembler.append(UnsafeRawBufferPointer($0).bytes, to: index % 3, now: 0) }
            #expect(ok)
            used += length + 1
            index += 1
        }
    }

    @Test("packets stay in order when slots are sent and reused before the ready queue empties")
    func readyQueueReuse() throws {
        // Each line fills a packet alone (packet length 4: "abc\n"), so every append after the
        // first closes one. Taking one ready packet and freeing it per append, without ever
        // draining the queue, cycles every slot through it many times over.
        var assembler = try BatchAssembler(backendCount: 1, packetBytes: 4, maxLineBytes: 8)
        var sent: [String] = []
        let total = 3 * assembler.pool.capacity
        for index in 0..<total {
            var line = Array(String(format3(index % 1000)).utf8)
            let appended = line.withUnsafeMutableBytes { assembler.append(UnsafeRawBufferPointer($0).bytes, to: 0, now: 0) }
            #expect(appended)
            if index >= 1, let slot = assembler.nextReady() {
                sent.append(assembler.pool.withBytes(ofSlot: slot) { $0.withUnsafeBytes { String(decoding: $0, as: UTF8.self) } })
                _ = assembler.completeSend(slot)
            }
        }
        assembler.closeAll()
        while let slot = assembler.nextReady() {
            sent.append(assembler.pool.withBytes(ofSlot: slot) { $0.withUnsafeBytes { String(decoding: $0, as: UTF8.self) } })
            _ = assembler.completeSend(slot)
        }
        #expect(sent == (0..<total).map { format3($0 % 1000) + "\n" })
    }
}

/// `value` as three digits, zero-padded.
func format3(_ value: Int) -> String {
    String(repeating: "0", count: 3 - String(value).count) + String(value)
}
