import Glibc
import RelayKernel

/// Turns a failed io_uring probe into what an operator can do about it.
public enum IOUringAdvice {
    /// Locked memory one worker's ring and provided-buffer ring need, with room to spare: a
    /// worker with the default sizes failed at 192 KiB and started at 256 KiB (measured with the
    /// probe's ring still counted, as it is at start-up).
    public static let memlockPerWorkerKiB = 256

    /// The probe's failure, then the likely cause and the fix.
    ///
    /// - Parameter threads: the workers that will run (the memlock advice scales with them).
    public static func explain(_ failure: UringProbeFailure, threads: Int = 1) -> String {
        guard let hint = hint(for: failure.errno, threads: threads) else { return failure.description }
        return "\(failure.description); \(hint)"
    }

    /// The cause and fix for an io_uring error number, if one is known.
    public static func hint(for errno: Errno?, threads: Int = 1) -> String? {
        guard let errno else { return nil }
        if errno == .notPermitted || errno == .permissionDenied {
            let sysctl = disabledSysctl
            switch sysctl {
            case "0"?:
                return "kernel.io_uring_disabled=0, so a seccomp profile blocks it (containers: allow io_uring_setup, io_uring_enter, io_uring_register)"
            case let value?:
                return "kernel.io_uring_disabled=\(value) (set it to 0, or 1 and add this user to kernel.io_uring_group, to allow io_uring)"
            case nil:
                return "io_uring is blocked by the kernel or a seccomp profile (containers: allow io_uring_setup, io_uring_enter, io_uring_register)"
            }
        }
        if errno == .noFunction { return "this kernel has no io_uring (Linux 6.0+ needed)" }
        if errno == .outOfMemory {
            let needed = memlockPerWorkerKiB * (threads + 1)
            return "the memlock limit is too low for \(threads) worker ring(s) and their receive buffers: allow at least \(needed)K "
                + "(`ulimit -l \(needed)`, or LimitMEMLOCK=\(needed)K in the systemd unit), or grant CAP_IPC_LOCK"
        }
        if errno == .invalidArgument { return "this kernel lacks an io_uring feature the relay uses (Linux 6.0+ needed)" }
        return nil
    }

    /// The `kernel.io_uring_disabled` sysctl, when the kernel has it.
    static var disabledSysctl: String? {
        guard let file = fopen("/proc/sys/kernel/io_uring_disabled", "r") else { return nil }
        defer { fclose(file) }
        var buffer = [CChar](repeating: 0, count: 16)
        guard fgets(&buffer, Int32(buffer.count), file) != nil else { return nil }
        return String(decoding: buffer.prefix { $0 != 0 && $0 != 10 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
