import RelayKernel

/// Filled receive buffers waiting to be processed, oldest first, in fixed storage.
///
/// Receive completions are taken off the CQ at once (so send completions behind them are
/// never stuck) and parked here while the core cannot take more. Every entry holds one
/// provided buffer, so the capacity is the buffer count and the queue can never overflow.
struct ReceiveQueue: ~Copyable {
    /// One filled buffer: its id, the completion's result and the listener it came from (its
    /// id as the receive's `UserData.index` carries it: 32 bits, never cut).
    struct Entry: Equatable {
        var bufferID: UInt16
        var result: Int32
        var listener: UInt32
    }

    /// Room for `capacity` entries, rounded up to a power of two so an index wraps with a
    /// mask, not a division (and needs no bounds check); non-copyable storage, so a push pays
    /// no uniqueness check.
    private var entries: MaskedTable<Entry>
    /// The most entries held at once (the buffer count).
    private let capacity: Int
    private var head = 0
    /// How many entries are waiting.
    private(set) var count = 0

    /// A queue for at most `capacity` entries.
    init(capacity: Int) {
        self.capacity = capacity
        entries = MaskedTable(repeating: Entry(bufferID: 0, result: 0, listener: 0), minimumCount: capacity)
    }

    var isEmpty: Bool { count == 0 }

    /// Parks a filled buffer behind those waiting.
    ///
    /// - Precondition: fewer than `capacity` entries are waiting (one per buffer).
    @inline(__always)
    mutating func push(bufferID: UInt16, result: Int32, listener: UInt32) {
        precondition(count < capacity, "receive queue holds more entries than there are buffers")
        entries[wrapping: head &+ count] = Entry(bufferID: bufferID, result: result, listener: listener)
        count &+= 1
    }

    /// Takes the oldest entry, or `nil` when none is waiting.
    @inline(__always)
    mutating func pop() -> Entry? {
        guard count > 0 else { return nil }
        let entry = entries[wrapping: head]
        head = (head &+ 1) & entries.mask
        count &-= 1
        return entry
    }
}
