import CLiburing
import Glibc

/// Nanoseconds on `CLOCK_MONOTONIC`, read once per loop turn (a vDSO call, no system call).
public enum MonotonicClock {
    /// The current monotonic time in nanoseconds.
    @inlinable @inline(__always)
    public static func nanoseconds() -> UInt64 {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return UInt64(now.tv_sec) &* 1_000_000_000 &+ UInt64(now.tv_nsec)
    }
}
