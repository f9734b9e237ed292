/// A fixed table of a power-of-two number of plain values whose index is masked into range,
/// so that reading or writing it needs no bounds check: every index names a slot.
///
/// For the worker's per-datagram and per-line tables that are indexed by a hash or a ring
/// position and wrap anyway (`PrimaryCache`'s sets, `ReceiveQueue`'s entries): with a
/// `RigidArray` each access paid a compare and a branch the mask had already made moot
/// (issue 16's instructions per line). The mask is what keeps each access inside the
/// allocation; there is no other way to reach the memory.
public struct MaskedTable<Element: BitwiseCopyable>: ~Copyable {
    /// The slots: `count` of them, all initialised, owned by this table.
    @usableFromInline let storage: UnsafeMutablePointer<Element>
    /// `count - 1`: every index is reduced by this before use.
    public let mask: Int

    /// How many slots there are (a power of two).
    public var count: Int { mask &+ 1 }

    /// A table of at least `minimumCount` slots (rounded up to a power of two, at least 1),
    /// each holding `value`.
    public init(repeating value: Element, minimumCount: Int) {
        precondition(minimumCount >= 0 && minimumCount <= 1 << 40, "table size out of range")
        var count = 1
        while count < minimumCount { count <<= 1 }
        storage = UnsafeMutablePointer<Element>.allocate(capacity: count)
        storage.initialize(repeating: value, count: count)
        mask = count - 1
    }

    deinit {
        // `Element` is bitwise-copyable: nothing to deinitialise.
        storage.deallocate()
    }

    /// The slot `index & mask`: any index, wrapped into the table.
    @inlinable @inline(__always)
    public subscript(wrapping index: Int) -> Element {
        get { storage[index & mask] }
        set { storage[index & mask] = newValue }
    }
}

/// The table owns its memory alone (it cannot be copied), so handing it to another thread hands
/// over the memory with it.
extension MaskedTable: @unchecked Sendable where Element: Sendable {}
