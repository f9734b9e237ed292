import Synchronization

/// Says that the relay is going out of service before it stops relaying (`--stop-delay`): once
/// announced, `GET /healthz` answers 503 `stopping` while the workers still relay, so a load
/// balancer takes the relay out of its pool before the drain begins. Set once, from the main
/// thread; read by the admin endpoint's thread.
public final class StopNotice: Sendable {
    private let announced = Atomic<Bool>(false)

    /// Nothing announced yet.
    public init() {}

    /// Announces the stop: `/healthz` turns 503 from its next request on.
    public func announce() { announced.store(true, ordering: .releasing) }

    /// Whether the stop was announced.
    public var isAnnounced: Bool { announced.load(ordering: .acquiring) }
}
