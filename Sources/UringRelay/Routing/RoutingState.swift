import RelayKernel
import Synchronization

/// The health view and backend addresses every worker routes by, published by the health
/// monitor and picked up by each worker once per loop turn (never per datagram).
///
/// Publishing bumps a generation number; a worker compares it with the one it last applied
/// (one atomic load per turn) and, when it differs, copies the new snapshot under the lock.
/// Send refusals flow the other way: a worker adds to a backend's refusal count (only when a
/// send fails) and the monitor takes the counts at each check.
public final class RoutingState: Sendable {
    /// What workers apply.
    public struct Snapshot: Sendable, Equatable {
        /// Which backends are down.
        public var down: [Bool]
        /// Where each backend is now.
        public var addresses: [SocketAddress]
        /// The generation this snapshot was published as.
        public var generation: UInt64
    }

    private let published = Atomic<UInt64>(0)
    private let snapshot: Mutex<Snapshot>
    private let refusals: [RefusalCount]
    private let subscribers = Mutex<[WakeupEvent]>([])

    private final class RefusalCount: Sendable {
        let value = Atomic<UInt64>(0)
    }

    /// All backends up, at their start-up addresses.
    public init(addresses: [SocketAddress]) {
        snapshot = Mutex(Snapshot(down: Array(repeating: false, count: addresses.count), addresses: addresses, generation: 0))
        refusals = addresses.map { _ in RefusalCount() }
    }

    /// The latest generation published.
    @inline(__always)
    public var generation: UInt64 { published.load(ordering: .acquiring) }

    /// The latest snapshot.
    public var current: Snapshot { snapshot.withLock { $0 } }

    /// Publishes a new health view and address list, and wakes every subscribed worker so an
    /// idle one applies it (and replays held batches) without waiting for traffic.
    public func publish(down: [Bool], addresses: [SocketAddress]) {
        snapshot.withLock { current in
            current.down = down
            current.addresses = addresses
            current.generation &+= 1
            published.store(current.generation, ordering: .releasing)
        }
        for subscriber in subscribers.withLock({ $0 }) { subscriber.signal() }
    }

    /// An event signalled at every publication, for one worker's ring to poll.
    public func subscribe() throws(Errno) -> WakeupEvent {
        let event = try WakeupEvent()
        subscribers.withLock { $0.append(event) }
        return event
    }

    /// Counts one `ECONNREFUSED` from a backend's socket.
    public func reportRefusal(backend: Int) {
        refusals[backend].value.wrappingAdd(1, ordering: .relaxed)
    }

    /// Takes (and resets) every backend's refusal count.
    public func takeRefusals() -> [UInt64] {
        refusals.map { $0.value.exchange(0, ordering: .relaxed) }
    }
}
