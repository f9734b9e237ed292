import RelayKernel
import Glibc

/// The host's settings and this process's limits that decide whether a relay can start, read
/// once so that `StartupDiagnosis` can explain a failure (or foresee one) from values a test
/// can also write down.
public struct HostLimits: Sendable, Equatable {
    /// `kernel.io_uring_disabled` (Linux 6.6+): 0 allows io_uring, 1 allows it only to members
    /// of `kernel.io_uring_group` and to `CAP_SYS_ADMIN`, 2 disables it; `nil` where the file
    /// does not exist (older kernels: io_uring is then never disabled by a sysctl).
    public var ioUringDisabled: Int?
    /// `kernel.io_uring_group` (the group allowed io_uring when `ioUringDisabled` is 1); -1 or
    /// `nil` when there is none.
    public var ioUringGroup: Int?
    /// The soft `RLIMIT_MEMLOCK`, in bytes; `nil` when unlimited.
    public var lockedMemoryBytes: UInt64?
    /// The soft `RLIMIT_NOFILE` (the open-files limit the kernel enforces); `nil` when unlimited.
    public var openFiles: UInt64?
    /// The hard `RLIMIT_NOFILE`, up to which an unprivileged process may raise the soft one.
    public var openFilesHard: UInt64?
    /// Descriptors open now: standard input, output and error, and whatever was inherited.
    public var openDescriptors: Int
    /// The kernel release (`uname -r`).
    public var kernelRelease: String

    /// Limits written out, for tests and tools.
    public init(
        ioUringDisabled: Int? = 0, ioUringGroup: Int? = nil, lockedMemoryBytes: UInt64? = nil,
        openFiles: UInt64? = nil, openFilesHard: UInt64? = nil, openDescriptors: Int = 3, kernelRelease: String = "6.12.0"
    ) {
        self.ioUringDisabled = ioUringDisabled
        self.ioUringGroup = ioUringGroup
        self.lockedMemoryBytes = lockedMemoryBytes
        self.openFiles = openFiles
        self.openFilesHard = openFilesHard
        self.openDescriptors = openDescriptors
        self.kernelRelease = kernelRelease
    }

    /// Sets this process's soft `RLIMIT_NOFILE` to `soft` (at most the hard limit).
    ///
    /// - Returns: whether the kernel took it.
    public static func setOpenFilesSoftLimit(_ soft: UInt64) -> Bool {
        var limit = rlimit()
        guard getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return false }
        limit.rlim_cur = rlim_t(min(soft, UInt64(limit.rlim_max)))
        return setrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0
    }

    /// This host's and this process's values now.
    public static func current() -> HostLimits {
        var memlock = rlimit()
        var nofile = rlimit()
        let memlockRead = getrlimit(__rlimit_resource_t(__RLIMIT_MEMLOCK.rawValue), &memlock) == 0
        let nofileRead = getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &nofile) == 0
        func finite(_ value: rlim_t) -> UInt64? { value == rlim_t.max ? nil : UInt64(value) }
        let openFiles = nofileRead ? finite(nofile.rlim_cur) : nil
        return HostLimits(
            ioUringDisabled: integer(atPath: "/proc/sys/kernel/io_uring_disabled"),
            ioUringGroup: integer(atPath: "/proc/sys/kernel/io_uring_group"),
            lockedMemoryBytes: memlockRead ? finite(memlock.rlim_cur) : nil,
            openFiles: openFiles,
            openFilesHard: nofileRead ? finite(nofile.rlim_max) : nil,
            openDescriptors: countOpenDescriptors(below: Int(min(openFiles ?? 4096, 4096))),
            kernelRelease: KernelSupport.release)
    }

    /// The descriptors open below `limit`: each `fcntl(F_GETFD)` that succeeds. Descriptors
    /// at or above 4096 are not looked for: a process with so many open at start-up does not
    /// run under a limit where they would matter.
    private static func countOpenDescriptors(below limit: Int) -> Int {
        (0..<max(limit, 0)).reduce(0) { count, descriptor in count + (fcntl(Int32(descriptor), F_GETFD) >= 0 ? 1 : 0) }
    }

    /// The integer a one-line `/proc` file holds, or `nil` when it cannot be read.
    private static func integer(atPath path: String) -> Int? {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { return nil }
        defer { close(descriptor) }
        var buffer = [UInt8](repeating: 0, count: 32)
        let count = buffer.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
        guard count > 0 else { return nil }
        let text = String(decoding: buffer[..<count], as: UTF8.self)
        return Int(text.drop { $0 == " " }.prefix { $0 != "\n" && $0 != " " && $0 != "\t" })
    }
}

