/// Filled receive buffers waiting to be processed, oldest first, in fixed storage.
///
/// Receive completions are taken off the CQ at once (so send completions behind them are
/// never stuck) and parked here while the core cannot take more. Every entry holds one
/// provided buffer, so the capacity is the buffer count and the queue can never overflow.
struct ReceiveQueue {
    /// One filled buffer: its id, the completion's result and the listener it came from (its
    /// id as the receive's `UserData.index` carries it: 32 bits, never cut).
    struct Entry: Equatable {
        var bufferID: UInt16
        var result: Int32
        var listener: UInt32
    }

    private var entries: [Entry]
    private var head = 0
    /// How many entries are waiting.
    private(set) var count = 0

    /// A queue for at most `capacity` entries.
    init(capacity: Int) {
        entries = Array(repeating: Entry(bufferID: 0, result: 0, listener: 0), count: capacity)
    }

    /// Whether nothing is waiting.
    var isEmpty: Bool { count == 0 }

    /// Appends a filled buffer.
    ///
    /// - Precondition: fewer than `capacity` entries are waiting.
    @inline(__always)
    mutating func push(bufferID: UInt16, result: Int32, listener: UInt32) {
        precondition(count < entries.count, "receive queue holds more entries than there are buffers")
        let tail = (head + count) % entries.count
        entries[tail] = Entry(bufferID: bufferID, result: result, listener: listener)
        count += 1
    }

    /// Removes and returns the oldest entry.
    @inline(__always)
    mutating func pop() -> Entry? {
        guard count > 0 else { return nil }
        let entry = entries[head]
        head = (head + 1) % entries.count
        count -= 1
        return entry
    }
}
