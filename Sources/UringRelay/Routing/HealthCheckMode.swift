import RelayKernel

/// How backends are checked (`--health-check`).
public enum HealthCheckMode: String, Sendable, CaseIterable {
    /// No checks: every backend is always up (the Go StatsRelay's behaviour).
    case none
    /// A TCP connect to the backend's host (port: `--health-check-port`, else the backend's).
    case tcp
    /// etsy statsd's management port (default 8126): send `health`, expect `health: up`.
    case statsdAdmin = "statsd-admin"

    /// The port checked when `--health-check-port` is not given.
    func defaultPort(backendPort: UInt16) -> UInt16 {
        switch self {
        case .none, .tcp: backendPort
        case .statsdAdmin: 8126
        }
    }
}
