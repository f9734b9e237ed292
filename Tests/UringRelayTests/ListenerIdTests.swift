import RelayKernel
import Testing
@testable import UringRelay

/// A listener's id travels 32 bits wide from the receive's `user_data` through the receive
/// queue to the core: none is cut to 8 bits (listener 256 read back as listener 0).
@Suite("Listener ids: 32 bits end to end")
struct ListenerIdTests {
    @Test("a receive's user_data keeps the listener id whole", arguments: [UInt32(0), 255, 256, 65_536, UInt32.max])
    func userData(listener: UInt32) {
        let data = UserData(.receive, index: listener)
        #expect(data.kind == .receive)
        #expect(data.index == listener)
    }

    @Test("isKind agrees with kind for every kind, whatever the index (the completion loop's fast test)",
          arguments: [UInt32(0), 1, 255, 256, UInt32.max])
    func isKindAgrees(index: UInt32) {
        for kind in UserData.Kind.allCases {
            let data = UserData(kind, index: index)
            for other in UserData.Kind.allCases {
                #expect(data.isKind(other) == (data.kind == other), "\(kind) asked for \(other)")
            }
        }
        // A value this program never submitted is none of them.
        let foreign = UserData(rawValue: 0xFF << 56 | UInt64(index))
        #expect(foreign.kind == nil)
        #expect(!UserData.Kind.allCases.contains { foreign.isKind($0) })
    }

    @Test("the receive queue hands back each entry's listener id whole, in order")
    func receiveQueue() {
        let listeners: [UInt32] = [0, 255, 256, 300, 65_535, 65_536, 1 << 31, UInt32.max]
        var queue = ReceiveQueue(capacity: listeners.count)
        for (index, listener) in listeners.enumerated() {
            queue.push(bufferID: UInt16(index), result: Int32(100 + index), listener: listener)
        }
        var popped: [ReceiveQueue.Entry] = []
        while let entry = queue.pop() { popped.append(entry) }
        #expect(popped.map(\.listener) == listeners)
        #expect(popped.map(\.bufferID) == (0..<listeners.count).map { UInt16($0) })
        #expect(popped.map(\.result) == (0..<listeners.count).map { Int32(100 + $0) })
    }

    @Test("a parked receive hands back its buffer id, result and listener whole, at their extremes",
          arguments: [(UInt16(0), Int32(0), UInt32(0)), (UInt16.max, Int32.max, UInt32.max), (UInt16(1), Int32(-105), UInt32(256)),
                      (UInt16(0x8000), Int32.min, UInt32(1) << 31)])
    func parkedReceive(bufferID: UInt16, result: Int32, listener: UInt32) {
        let entry = ParkedReceive(bufferID: bufferID, result: result, listener: listener)
        #expect(entry.bufferID == bufferID)
        #expect(entry.result == result)
        #expect(entry.listener == listener)
        #expect(entry == ParkedReceive(bufferID: bufferID, result: result, listener: listener))
        #expect(entry != ParkedReceive(bufferID: bufferID &+ 1, result: result, listener: listener))
    }

    @Test("the receive queue keeps entries in order across many wraps, full to its capacity, at any capacity", arguments: [1, 3, 8, 100, 128])
    func receiveQueueWraps(capacity: Int) {
        var queue = ReceiveQueue(capacity: capacity)
        var next = 0
        var expected = 0
        var outOfOrder = 0
        // Fill to capacity, take all but one, fill again: the head goes round many times.
        for _ in 0..<50 {
            while queue.count < capacity {
                queue.push(bufferID: UInt16(truncatingIfNeeded: next), result: Int32(next), listener: UInt32(next))
                next += 1
            }
            while queue.count > min(1, capacity - 1), let entry = queue.pop() {
                if entry.result != Int32(expected) || entry.listener != UInt32(expected) { outOfOrder += 1 }
                expected += 1
            }
        }
        while let entry = queue.pop() {
            if entry.result != Int32(expected) { outOfOrder += 1 }
            expected += 1
        }
        #expect(outOfOrder == 0)
        #expect(expected == next, "every entry pushed came out once")
        let emptied = queue.isEmpty
        #expect(emptied)
    }
}
