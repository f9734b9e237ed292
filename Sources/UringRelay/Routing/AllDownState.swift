/// What the relay does about every backend being down, derived from two facts only: whether
/// every backend is down, and the down-policy in force. Under `rehash` and `drop` it fails open
/// (each metric to its primary, as `Router.isFailingOpen` routes); under `hold` it holds every
/// backend's lines.
///
/// The health monitor updates it after every round of checks, every change of its settings
/// (a reload of `on-backend-down` with every backend down) and every change of the pool, and
/// logs each change of mode, so the gauge (`statsrelay_failing_open`), the count of activations
/// and the log always say what the workers do. Sans-IO: a test drives it directly.
struct AllDownState: Equatable, Sendable {
    /// The relay's answer to the backends' health.
    enum Mode: Equatable, Sendable {
        /// At least one backend is up: every line follows the down-policy.
        case relaying
        /// Every backend is down under `rehash` or `drop`: each metric goes to its primary.
        case failingOpen
        /// Every backend is down under `hold`: every backend's lines are held.
        case holding
    }

    /// The mode in force.
    private(set) var mode = Mode.relaying
    /// Times failing open began (each rising edge of `isFailingOpen`).
    private(set) var activations: UInt64 = 0

    /// Whether the relay is failing open: every backend is down and the policy is not `hold`.
    var isFailingOpen: Bool { mode == .failingOpen }

    /// The mode that every backend being down (or not) gives under `policy`.
    static func mode(allDown: Bool, policy: DownPolicy) -> Mode {
        guard allDown else { return .relaying }
        return policy == .hold ? .holding : .failingOpen
    }

    /// Takes the current facts; counts an activation when failing open begins.
    ///
    /// - Returns: the previous mode when the mode changed (for the caller to log), else `nil`.
    mutating func update(allDown: Bool, policy: DownPolicy) -> Mode? {
        let next = Self.mode(allDown: allDown, policy: policy)
        guard next != mode else { return nil }
        let previous = mode
        mode = next
        if next == .failingOpen { activations += 1 }
        return previous
    }
}
