import Synchronization

/// Hands one value from a worker thread to the thread that joins it.
public final class ResultSlot<Value: Sendable>: Sendable {
    /// The value, once stored.
    private let value = Mutex<Value?>(nil)

    /// Creates an empty slot.
    public init() {}

    /// Stores `newValue`, replacing any earlier one.
    public func store(_ newValue: Value) {
        value.withLock { $0 = newValue }
    }

    /// The stored value, if any.
    public func load() -> Value? {
        value.withLock { $0 }
    }
}
