import RelayKernel

/// Filled receive buffers waiting to be processed, oldest first, in fixed storage.
///
/// Receive completions are taken off the CQ at once (so send completions behind them are
/// never stuck) and parked here while the send-buffer pool is short of room. Every entry holds
/// one provided buffer, so the capacity is the buffer count and the queue can never overflow.
struct ReceiveQueue {
    private var bufferIDs: [UInt16]
    private var results: [Int32]
    private var head = 0
    /// How many entries are waiting.
    private(set) var count = 0

    /// A queue for at most `capacity` entries.
    init(capacity: Int) {
        bufferIDs = Array(repeating: 0, count: capacity)
        results = Array(repeating: 0, count: capacity)
    }

    /// Whether nothing is waiting.
    var isEmpty: Bool { count == 0 }

    /// Appends a filled buffer.
    ///
    /// - Precondition: fewer than `capacity` entries are waiting.
    @inline(__always)
    mutating func push(bufferID: UInt16, result: Int32) {
        precondition(count < bufferIDs.count, "receive queue holds more entries than there are buffers")
        let tail = (head + count) % bufferIDs.count
        bufferIDs[tail] = bufferID
        results[tail] = result
        count += 1
    }

    /// Removes and returns the oldest entry.
    @inline(__always)
    mutating func pop() -> (bufferID: UInt16, result: Int32)? {
        guard count > 0 else { return nil }
        let entry = (bufferIDs[head], results[head])
        head = (head + 1) % bufferIDs.count
        count -= 1
        return entry
    }
}
