import Synchronization

/// Why a receiving tool stopped; printed as `stopped_by`.
public enum StopReason: String, Sendable {
    /// The expected number of lines or datagrams arrived.
    case expected = "expect"
    /// Nothing arrived for the idle period after at least one arrival.
    case idle
    /// The hard `--max-seconds` bound passed.
    case maxSeconds = "max-seconds"
    /// `SIGINT` or `SIGTERM` arrived.
    case signal
    /// A receiver failed with an unexpected error.
    case error
}

/// State shared between the receiver threads and the main thread of `benchsink` and `kernelbaseline`.
public final class ReceiverControl: Sendable {
    /// Set by the main thread to make the receivers return.
    private let stopFlag = Atomic<Bool>(false)
    /// Units (lines or datagrams) received so far, across all receivers.
    private let received = Atomic<Int>(0)
    /// The last arrival, from `monotonicNanoseconds()`; 0 until the first.
    private let lastArrival = Atomic<UInt64>(0)
    /// The first unexpected `errno` a receiver met, or 0.
    private let failureCode = Atomic<Int32>(0)
    /// Units after which the run is complete; 0 means no target.
    public let target: Int

    /// Creates the shared state for a run that completes after `target` units (0 for none).
    public init(target: Int) {
        self.target = target
    }

    /// Whether receivers should return.
    @inline(__always)
    public var shouldStop: Bool { stopFlag.load(ordering: .relaxed) }

    /// Asks the receivers to return; they notice within their receive timeout.
    public func requestStop() {
        stopFlag.store(true, ordering: .relaxed)
    }

    /// Records `units` received at `now` and wakes the main thread when the target is first reached.
    @inline(__always)
    public func record(units: Int, at now: UInt64) {
        lastArrival.store(now, ordering: .relaxed)
        guard target > 0, units > 0 else { return }
        let total = received.wrappingAdd(units, ordering: .relaxed).newValue
        if total >= target && total - units < target {
            SignalWaiter.wakeMain()
        }
    }

    /// Records that a receiver failed with `code` and wakes the main thread.
    public func fail(code: Int32) {
        _ = failureCode.compareExchange(expected: 0, desired: code, ordering: .relaxed)
        SignalWaiter.wakeMain()
    }

    /// The first failure code, or 0.
    public var failure: Int32 { failureCode.load(ordering: .relaxed) }

    /// Runs the main thread's supervision until a stop condition holds, then asks the receivers to stop.
    ///
    /// - Parameters:
    ///   - signals: the waiter created before the receivers started.
    ///   - maxSeconds: the hard bound on the whole run.
    ///   - idleSeconds: stop this long after the last arrival once something arrived; 0 disables.
    public func supervise(signals: SignalWaiter, maxSeconds: Double, idleSeconds: Double) -> StopReason {
        let start = monotonicNanoseconds()
        let limit = nanoseconds(maxSeconds)
        let idle = nanoseconds(idleSeconds)
        let tick: UInt64 = 20_000_000
        var reason = StopReason.maxSeconds
        while true {
            if failure != 0 {
                reason = .error
                break
            }
            if target > 0 && received.load(ordering: .relaxed) >= target {
                reason = .expected
                break
            }
            let now = monotonicNanoseconds()
            if now &- start >= limit {
                reason = .maxSeconds
                break
            }
            let last = lastArrival.load(ordering: .relaxed)
            if idle > 0 && last != 0 && now > last && now - last >= idle {
                reason = .idle
                break
            }
            if signals.wait(nanoseconds: min(tick, limit - (now - start))) == .terminate {
                reason = .signal
                break
            }
        }
        requestStop()
        return reason
    }
}
