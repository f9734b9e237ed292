import Glibc

/// Reads `CLOCK_MONOTONIC` in nanoseconds; the runner compares these readings across processes.
@inline(__always)
public func monotonicNanoseconds() -> UInt64 {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return UInt64(now.tv_sec) &* 1_000_000_000 &+ UInt64(now.tv_nsec)
}

/// Converts a `CLOCK_MONOTONIC` reading in nanoseconds to seconds.
public func seconds(_ nanoseconds: UInt64) -> Double {
    Double(nanoseconds) / 1e9
}

/// Converts a duration in seconds to nanoseconds, clamping negative or non-finite input to zero.
public func nanoseconds(_ seconds: Double) -> UInt64 {
    guard seconds.isFinite, seconds > 0 else { return 0 }
    return UInt64(min(seconds, 1e9) * 1e9)
}

/// Sleeps for `duration` nanoseconds; returns early only when a signal interrupts the sleep.
public func sleep(nanoseconds duration: UInt64) {
    var request = timespec(
        tv_sec: Int(duration / 1_000_000_000),
        tv_nsec: Int(duration % 1_000_000_000)
    )
    var remaining = timespec()
    _ = nanosleep(&request, &remaining)
}

/// CPU time and peak resident set size of this process, from `getrusage(2)`.
public struct ProcessUsage: Sendable {
    /// User-mode CPU seconds.
    public var userSeconds: Double
    /// Kernel-mode CPU seconds.
    public var systemSeconds: Double
    /// Peak resident set size in KiB (`ru_maxrss`).
    public var maxResidentKilobytes: Int

    /// User plus kernel CPU seconds.
    public var cpuSeconds: Double { userSeconds + systemSeconds }

    /// Reads the usage of the calling process, all its threads included.
    public static func current() -> ProcessUsage {
        var usage = rusage()
        getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &usage)
        return ProcessUsage(
            userSeconds: Double(usage.ru_utime.tv_sec) + Double(usage.ru_utime.tv_usec) / 1e6,
            systemSeconds: Double(usage.ru_stime.tv_sec) + Double(usage.ru_stime.tv_usec) / 1e6,
            maxResidentKilobytes: usage.ru_maxrss
        )
    }

    /// The usage as JSON fields.
    public var json: [(String, JSONValue)] {
        [
            ("cpu_seconds", .double(cpuSeconds)),
            ("cpu_user_seconds", .double(userSeconds)),
            ("cpu_system_seconds", .double(systemSeconds)),
            ("max_rss_kb", .int(maxResidentKilobytes)),
        ]
    }
}
