@testable import RelayKernel
import Testing

/// The portable driver's `sendmmsg` batch groups its packets by backend (one call per backend
/// socket). Socket level, below any io driver (the uring driver sends SQEs, not this batch), so
/// it runs once.
@Suite("SendBatch: packets added for several backends, interleaved, reach each backend in the order added", .timeLimit(.minutes(1)), .onOwnThread)
struct SendBatchGroupingTests {
    /// Which backend each packet is for, in the order added: interleaved, first packet to the
    /// highest index, one backend added only late, one (index 3) never.
    static let orders: [[Int]] = [
        [2, 0, 1, 0, 2, 1, 1, 0, 2, 2, 0, 1],
        [4, 4, 0, 2, 0, 4, 1, 2],
        [0],
        (0..<64).map { ($0 * 7) % 5 == 3 ? 0 : ($0 * 7) % 5 },
    ]

    @Test("each backend receives its packets whole, in the order added; each packet's result is its length", arguments: orders)
    func interleavedBackends(order: [Int]) throws {
        let backends = try (0..<5).map { _ in try TestBackend() }
        let sockets = try BackendSockets(connecting: backends.map(\.address), sendBufferBytes: 1 << 20)
        var pool = try SendBufferPool(capacity: 64, slotBytes: 256)
        var batch = SendBatch(capacity: 64)
        // Two rounds through the same batch: `removeAll` forgets the first round's backends.
        for round in 0..<2 {
            var expected = [[String]](repeating: [], count: backends.count)
            var slots: [Int] = []
            for (index, backend) in order.enumerated() {
                let text = "r\(round).p\(index).b\(backend):1|c"
                let acquired = pool.acquire(for: backend)
                let slot = try #require(acquired)
                let bytes = Array(text.utf8)
                pool.append(bytes.span.bytes, to: slot)
                batch.append(slot: slot, backend: backend)
                slots.append(slot)
                expected[backend].append(text)
            }
            batch.send(from: pool, to: sockets)
            let results = (0..<order.count).map { batch.result($0) }
            let retried = (0..<order.count).filter { batch.wasRetried($0) }
            #expect(results == slots.map { Int32(pool.length(of: $0)) }, "round \(round)")
            #expect(retried.isEmpty, "round \(round)")
            let received = try collect(from: backends, expectedLines: order.count, seconds: 10, settleMilliseconds: 50)
            #expect(received.lines == expected, "round \(round)")
            batch.removeAll()
            for slot in slots { pool.release(slot) }
        }
    }
}
