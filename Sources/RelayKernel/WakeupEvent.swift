import CLiburing
import Glibc
import Synchronization

/// An eventfd that another thread signals to wake a worker out of its ring wait.
///
/// Shared by the relay (which signals) and the worker (whose ring polls it), so it is a
/// reference-counted owner rather than a non-copyable one: the descriptor is closed when the
/// last of the two lets go, never while the other may still use it.
public final class WakeupEvent: Sendable {
    /// The eventfd.
    package let descriptor: Int32
    /// Set by `signal()`, cleared by `reset()`: what `isPending` reads without a system call.
    private let pending = Atomic<Bool>(false)

    /// Creates a non-blocking, close-on-exec eventfd.
    public init() throws(Errno) {
        descriptor = try systemCall { eventfd(0, Int32(EFD_CLOEXEC | EFD_NONBLOCK)) }
    }

    // close(2) is not retried: see `systemCall`.
    deinit { _ = close(descriptor) }

    /// Makes the eventfd readable; safe from any thread, any number of times.
    public func signal() {
        pending.store(true, ordering: .releasing)
        var one: UInt64 = 1
        // EAGAIN means the counter is already at its maximum: the event is signalled either way.
        _ = try? systemCall { write(descriptor, &one, MemoryLayout<UInt64>.size) }
    }

    /// Resets the event after it fired, so a poll on it waits for the next `signal()`.
    public func reset() {
        pending.store(false, ordering: .releasing)
        var count: UInt64 = 0
        // EAGAIN means it was not signalled: already reset.
        _ = try? systemCall { read(descriptor, &count, MemoryLayout<UInt64>.size) }
    }

    /// Waits until the event is signalled or the timeout passes.
    ///
    /// - Parameter timeoutNanoseconds: the longest wait; `nil` waits without limit.
    /// - Returns: whether the event is signalled.
    public func wait(timeoutNanoseconds: UInt64?) -> Bool {
        var poller = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
        let deadline = timeoutNanoseconds.map { MonotonicClock.nanoseconds() &+ $0 }
        // The timeout is recomputed on every call, so the EINTR retry in `systemCall` keeps the deadline.
        do throws(Errno) {
            return try systemCall { () -> Int32 in
                var milliseconds: Int32 = -1
                if let deadline {
                    let now = MonotonicClock.nanoseconds()
                    milliseconds = now >= deadline ? 0 : Int32(clamping: (deadline - now + 999_999) / 1_000_000)
                }
                return poll(&poller, 1, milliseconds)
            } > 0
        } catch {
            return false  // poll(2) on one valid descriptor fails only for lack of memory
        }
    }

    /// Whether `signal()` has been called since the last `reset()`: one atomic load, for a loop
    /// that polls the eventfd only now and then but must notice a stop at once.
    public var isPending: Bool { pending.load(ordering: .acquiring) }

    /// Whether `signal()` has been called since the event was created.
    public var isSignalled: Bool {
        var poller = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
        return (try? systemCall { poll(&poller, 1, 0) }) == 1
    }
}
