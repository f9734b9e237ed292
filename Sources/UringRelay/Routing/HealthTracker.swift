import RelayKernel

/// One backend's health as the checks see it: up or down, since when, and the run of results
/// that decides the next change (`rise` successes bring it up, `fall` failures take it down).
///
/// A backend starts up, so that a relay starting beside a healthy pool forwards at once.
///
/// **Flap damping.** Each change moves the backend's metric names to other backends or back,
/// so a backend that goes down and up every few hundred milliseconds would move them back and
/// forth all the time (and lose lines at each move). A backend that goes down again less than
/// `flapHoldMaxNanoseconds` after it came up is flapping: it is held down for at least
/// `flapHoldNanoseconds` from the moment it went down, and each further flap doubles the hold,
/// up to `flapHoldMaxNanoseconds`. A backend that stays up for `flapHoldMaxNanoseconds` is
/// forgiven: its next down is treated as a first one (no hold). The first down of a backend
/// never holds it: a backend restarted once comes back after `rise` successes, as without
/// damping. `flapHoldNanoseconds` 0 turns damping off.
///
/// ```
/// state   up ─┐ down ┌ up ┐ down (flap: hold H) ┌ up ┐ down (flap: hold 2H, ≤ max) …
/// hold        0      │    H ─────────────────────┘    2H
/// ```
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
    /// The hold-down given to a backend's first flap (nanoseconds); 0 turns damping off. A
    /// reload may change it: the current hold keeps its length, the next flap uses the new one.
    public var flapHoldNanoseconds: UInt64 = 0
    /// The longest hold-down, and how long a backend must stay up to be forgiven its flaps.
    public var flapHoldMaxNanoseconds: UInt64 = 0
    /// The hold-down of the current down period (0: none), or of the last one while up: the
    /// next flap doubles it.
    public private(set) var holdNanoseconds: UInt64 = 0
    /// How many times the backend went down as a flap and was held down.
    public private(set) var flapHolds = 0
    /// Why the last check failed, for the log.
    public private(set) var lastFailure: String?

    /// A tracker for a backend that is up as of `now`.
    public init(rise: Int, fall: Int, now: UInt64, flapHoldNanoseconds: UInt64 = 0, flapHoldMaxNanoseconds: UInt64 = 0) {
        precondition(rise > 0 && fall > 0)
        self.rise = rise
        self.fall = fall
        self.flapHoldNanoseconds = flapHoldNanoseconds
        self.flapHoldMaxNanoseconds = flapHoldMaxNanoseconds
        since = now
    }

    /// Whether the backend is down and held down by flap damping at `now`.
    public func isHeld(at now: UInt64) -> Bool { state == .down && holdNanoseconds > 0 && now &- since < holdNanoseconds }

    /// When the current hold-down ends (monotonic nanoseconds), if the backend is held down.
    public var heldUntil: UInt64? { state == .down && holdNanoseconds > 0 ? since &+ holdNanoseconds : nil }

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
            // A flap: down again soon after coming back from a down (not the first down ever).
            let flapped = flapHoldNanoseconds > 0 && changes > 0 && now &- since < max(flapHoldMaxNanoseconds, flapHoldNanoseconds)
            if flapped {
                let doubled = holdNanoseconds == 0 ? flapHoldNanoseconds : holdNanoseconds.multipliedReportingOverflow(by: 2).partialValue
                holdNanoseconds = min(max(doubled, flapHoldNanoseconds), max(flapHoldMaxNanoseconds, flapHoldNanoseconds))
                flapHolds += 1
            } else {
                holdNanoseconds = 0
            }
            return change(to: .down, now: now)
        case (.down, true):
            streak += 1
            guard streak >= rise, !isHeld(at: now) else { return nil }
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
