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
}
