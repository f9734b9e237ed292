import RelayKernel

/// What happens to the metrics of a backend that is down (`--on-backend-down`).
public enum DownPolicy: String, Sendable, CaseIterable {
    /// Only the dead backend's metrics move, spread over live backends by a rule every relay
    /// with the same backend list and health view computes alike; they return on recovery.
    case rehash
    /// Batches wait in a bounded buffer per backend and are sent when it recovers; past the
    /// bound the oldest are dropped and counted.
    case hold
    /// Lines are counted and dropped.
    case drop
}
