import RelayKernel
import Synchronization

/// One worker's control channel: a queue of `WorkerCommand`s any thread may send to, read by
/// the worker once per turn, with one wake-up event that the worker's driver waits on.
///
/// Multi-producer, single consumer. Sending takes a lock and signals the event; the worker
/// pays one atomic load per turn while the queue is empty (`hasPending`), and takes the lock
/// only to take what is queued. Never touched per datagram.
///
/// The same event wakes the worker for a pool published by `RoutingState` (the worker looks at
/// the published pool every turn), so a driver waits on one descriptor for everything a worker
/// must learn while it runs.
public final class WorkerControl: Sendable {
    /// Signalled at each send; the driver polls it and resets it before taking the queue, so a
    /// command sent after the take signals it again.
    public let wakeup: WakeupEvent
    private let queue = Mutex<Queue>(Queue())
    /// Whether commands are queued: what the worker reads every turn without the lock.
    private let queued = Atomic<Bool>(false)

    private struct Queue {
        var commands: [(command: WorkerCommand, receipt: CommandReceipt?)] = []
        /// Set when the worker stops: later sends are refused at once.
        var closed = false
    }

    /// A channel with an empty queue.
    ///
    /// - Throws: `Errno` when the eventfd cannot be created.
    public init() throws(Errno) { wakeup = try WakeupEvent() }

    /// Queues `command` for the worker and wakes it. The worker answers `receipt` once it has
    /// applied the command (or, should it stop first, refuses it).
    ///
    /// - Returns: `false` when the worker has stopped (the receipt is answered as refused).
    @discardableResult
    public func send(_ command: WorkerCommand, receipt: CommandReceipt? = nil) -> Bool {
        let accepted = queue.withLock { queue -> Bool in
            guard !queue.closed else { return false }
            queue.commands.append((command, receipt))
            queued.store(true, ordering: .releasing)
            return true
        }
        guard accepted else {
            receipt?.workerRefused()
            return false
        }
        wakeup.signal()
        return true
    }

    /// Whether commands wait to be taken: one atomic load.
    @inline(__always)
    public var hasPending: Bool { queued.load(ordering: .acquiring) }

    /// Takes every queued command, oldest first (worker side).
    public func take() -> [(command: WorkerCommand, receipt: CommandReceipt?)] {
        guard hasPending else { return [] }
        return queue.withLock { queue in
            queued.store(false, ordering: .releasing)
            defer { queue.commands.removeAll() }
            return queue.commands
        }
    }

    /// Applies every queued command to `core`, in order, and answers each receipt: what a
    /// driver does at the start of every turn (one atomic load when nothing is queued). The
    /// driver resets `wakeup` when its poll reports it, before this.
    public func apply(to core: inout RelayCore, now: UInt64) {
        guard hasPending else { return }
        for (command, receipt) in take() {
            core.apply(command, now: now)
            receipt?.workerApplied()
        }
    }

    /// Refuses every later send and every command still queued (the worker has stopped).
    public func close() {
        let left = queue.withLock { queue in
            queue.closed = true
            queued.store(false, ordering: .releasing)
            defer { queue.commands.removeAll() }
            return queue.commands
        }
        for (_, receipt) in left { receipt?.workerRefused() }
    }

    /// Whether the worker has stopped taking commands.
    public var isClosed: Bool { queue.withLock { $0.closed } }
}
