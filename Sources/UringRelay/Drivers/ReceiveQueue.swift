import RelayKernel

/// Filled receive buffers waiting to be processed, oldest first, in fixed storage.
///
/// Receive completions are taken off the CQ at once (so send completions behind them are
/// never stuck) and parked here while the core cannot take more. Every entry holds one
/// provided buffer, so the capacity is the buffer count and the queue can never overflow.
struct ReceiveQueue: ~Copyable {
    /// One filled buffer: its id, the completion's result and the listener it came from (its
    /// id as the receive's `UserData.index` carries it: 32 bits, never cut), kept as the CQE
    /// carried them.
    typealias Entry = ParkedReceive

    /// Room for `capacity` entries, rounded up to a power of two so an index wraps with a
    /// mask, not a division (and needs no bounds check); non-copyable storage, so a push pays
    /// no uniqueness check.
    private var entries: MaskedTable<Entry>
    /// The most entries held at once (the buffer count).
    private let capacity: Int
    /// The oldest entry's position and one past the newest's; positions count up from 0 and
    /// are wrapped into the table as they are used (an `Int` does not overflow).
    private var head = 0
    private var tail = 0

    /// A queue for at most `capacity` entries.
    init(capacity: Int) {
        self.capacity = capacity
        entries = MaskedTable(repeating: Entry(bufferID: 0, result: 0, listener: 0), minimumCount: capacity)
    }

    /// How many entries are waiting.
    var count: Int { tail &- head }

    var isEmpty: Bool { head == tail }

    /// Parks a filled buffer behind those waiting.
    ///
    /// - Precondition: fewer than `capacity` entries are waiting (one per buffer).
    @inline(__always)
    mutating func push(bufferID: UInt16, result: Int32, listener: UInt32) {
        precondition(count < capacity, "receive queue holds more entries than there are buffers")
        entries[wrapping: tail] = Entry(bufferID: bufferID, result: result, listener: listener)
        tail &+= 1
    }

    /// Takes completions of `batch` in order (`Ring.takeCompletions`): parks each datagram of
    /// a receive that stays armed behind those waiting, while there is room, and copies the
    /// others into `others`; a datagram beyond the room goes to `others` too, for `push`,
    /// which stops the worker.
    ///
    /// - Returns: how many went to `others`, to be handled in order before the next call.
    @inline(__always)
    mutating func park(from ring: borrowing Ring, in batch: inout CompletionBatch, others: borrowing CompletionRun) -> Int {
        ring.takeCompletions(in: &batch, parkingIn: entries, tail: &tail, limit: head &+ capacity, others: others)
    }

    /// The oldest entry's position: read before popping, it tells `recycle(poppedSince:into:)`
    /// which entries were popped.
    var position: Int { head }

    /// Gives the buffers of the entries popped since `position` was `start` back to `buffers`,
    /// in one call (`ProvidedBufferRing.recycle(parked:from:to:)`). Nothing was pushed since:
    /// those entries are as they were popped.
    @inline(__always)
    func recycle(poppedSince start: Int, into buffers: inout ProvidedBufferRing) {
        buffers.recycle(parked: entries, from: start, to: head)
    }

    /// Takes the oldest entry, or `nil` when none is waiting.
    @inline(__always)
    mutating func pop() -> Entry? {
        guard head != tail else { return nil }
        let entry = entries[wrapping: head]
        head &+= 1
        return entry
    }
}
