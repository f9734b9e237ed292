import Dispatch
import Synchronization

/// What a sender awaits after sending one command to several workers: each worker's answer
/// (applied, or not because it has stopped), with a bound on the wait.
///
/// A worker answers once per command, from its own thread, at the turn boundary where it applied
/// it, or when it stops with the command still queued (`WorkerControl.close`). The last answer
/// wakes the sender; a worker that never answers (hung, or its thread gone without closing its
/// control) is cut off by the sender's bound.
public final class CommandReceipt: Sendable {
    private let state: Mutex<(awaited: Int, applied: Int, refused: Int)>
    private let done = DispatchSemaphore(value: 0)

    /// A receipt for a command sent to `workers` workers.
    public init(workers: Int) {
        state = Mutex((workers, 0, 0))
        if workers == 0 { done.signal() }
    }

    /// One worker applied the command.
    public func workerApplied() { answer(applied: true) }

    /// One worker stopped before it applied the command (or was stopped already).
    public func workerRefused() { answer(applied: false) }

    private func answer(applied: Bool) {
        let last = state.withLock { state -> Bool in
            if applied { state.applied += 1 } else { state.refused += 1 }
            return state.applied + state.refused == state.awaited
        }
        if last { done.signal() }
    }

    /// The workers that applied it, that refused it, and that had not answered when the wait ended.
    public struct Outcome: Sendable, Equatable {
        public var applied: Int
        public var refused: Int
        public var unanswered: Int
        /// Whether every worker applied it.
        public var isComplete: Bool { refused == 0 && unanswered == 0 }
    }

    /// Waits until every worker answered, or `timeoutNanoseconds` passed.
    public func wait(timeoutNanoseconds: UInt64) -> Outcome {
        _ = done.wait(timeout: .now() + .nanoseconds(Int(clamping: timeoutNanoseconds)))
        return state.withLock { Outcome(applied: $0.applied, refused: $0.refused, unanswered: $0.awaited - $0.applied - $0.refused) }
    }
}
