import RelayKernel

/// One backend's health as the checks see it: up or down, since when, and the run of results
/// that decides the next change (`rise` successes bring it up, `fall` failures take it down).
///
/// A backend starts up, so that a relay starting beside a healthy pool forwards at once.
public struct HealthTracker: Sendable, Equatable {
    /// Up or down.
    public enum State: String, Sendable { case up, down }

    /// The current state.
    public private(set) var state: State = .up
    /// When the current state began (monotonic nanoseconds).
    public private(set) var since: UInt64
    /// Consecutive results against the current state.
    public private(set) var streak = 0
    /// How many state changes so far.
    public private(set) var changes = 0
    /// Successes needed to come up (a reload may change it: the next result counts against it).
    public var rise: Int
    /// Failures needed to go down (a reload may change it, as `rise`).
    public var fall: Int
    /// Why the last check failed, for the log.
    public private(set) var lastFailure: String?

    /// A tracker for a backend that is up as of `now`.
    public init(rise: Int, fall: Int, now: UInt64) {
        precondition(rise > 0 && fall > 0)
        self.rise = rise
        self.fall = fall
        since = now
    }

    /// Records one check result.
    ///
    /// - Returns: the new state if this result changed it.
    public mutating func record(success: Bool, reason: String? = nil, now: UInt64) -> State? {
        if !success, let reason { lastFailure = reason }
        switch (state, success) {
        case (.up, true), (.down, false):
            streak = 0
            return nil
        case (.up, false):
            streak += 1
            guard streak >= fall else { return nil }
            return change(to: .down, now: now)
        case (.down, true):
            streak += 1
            guard streak >= rise else { return nil }
            return change(to: .up, now: now)
        }
    }

    private mutating func change(to new: State, now: UInt64) -> State {
        state = new
        since = now
        streak = 0
        changes += 1
        return new
    }
}
