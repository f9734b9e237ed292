import RelayKernel
import Glibc

/// Turns a start-up failure into what an operator needs: the cause and the fix, on one line,
/// after the failed call itself (`io_uring_queue_init: Operation not permitted (errno 1): …`).
///
/// Also foresees the one failure that can be checked before anything is opened: too low an
/// open-files limit (`checkDescriptors`). The relay calls `explain` when a worker cannot start;
/// the I/O driver selection calls `explainIOUring` to say why it fell back to the portable
/// driver (`io_backend=portable reason="…"`).
public enum StartupDiagnosis {
    /// The failed call, then the cause and the fix where they are known; otherwise the failed
    /// call alone.
    ///
    /// - Parameters:
    ///   - error: the system call that failed, as the relay reports it.
    ///   - configuration: the configuration being started (the amounts needed come from it).
    ///   - host: the host's limits and settings (read now unless given).
    public static func explain(
        _ error: SystemCallError, configuration: RelayConfiguration, host: HostLimits = .current()
    ) -> String {
        let advice: String?
        switch error.errno.rawValue {
        case EMFILE, ENFILE:
            advice = descriptorAdvice(configuration: configuration, host: host, errno: error.errno)
        default:
            advice = error.operation.hasPrefix("io_uring")
                ? explainIOUring(error.errno, configuration: configuration, host: host) : nil
        }
        guard let advice else { return error.description }
        return "\(error.description): \(advice)"
    }

    /// Why io_uring failed with `errno` and what to do, or `nil` for an error with no known
    /// cause beyond its own text.
    ///
    /// - `EPERM`/`EACCES`: the `kernel.io_uring_disabled` sysctl (its value is read and named),
    ///   else a seccomp filter (a container's default profile blocks io_uring).
    /// - `ENOMEM`: the locked-memory limit, with the amount this configuration needs.
    /// - `ENOSYS`: no io_uring in this kernel (or a filter that answers `ENOSYS`).
    /// - `EINVAL`: a completion queue larger than io_uring allows (named with the options that
    ///   size it), else a kernel too old for the features used.
    public static func explainIOUring(_ errno: Errno, configuration: RelayConfiguration, host: HostLimits = .current()) -> String? {
        switch errno.rawValue {
        case EPERM, EACCES:
            return permissionAdvice(host: host)
        case ENOMEM:
            return memoryAdvice(configuration: configuration, host: host)
        case ENOSYS:
            return "this kernel (\(host.kernelRelease)) has no io_uring: it was built without CONFIG_IO_URING, or a "
                + "seccomp filter answers ENOSYS for io_uring_setup; the relay needs Linux 6.1 or later with io_uring"
        case EINVAL where configuration.ringSizing.exceedsCompletionLimit:
            return completionLimitAdvice(configuration: configuration)
        case EINVAL:
            return "the kernel (\(host.kernelRelease)) rejected an io_uring feature the relay uses (provided-buffer "
                + "rings, multishot receive): Linux 6.1 or later is needed"
        default:
            return nil
        }
    }

    /// Why a ring of `configuration`'s sizes cannot exist: one completion entry per receive
    /// buffer and send slot, and the send slots grow with the longest line over the packet
    /// length (each line longer than a packet takes a slot of its own).
    private static func completionLimitAdvice(configuration: RelayConfiguration) -> String {
        let sizing = configuration.ringSizing
        let longest = configuration.rewrite.rewrittenDatagramBytes(configuration.maxDatagramBytes)
        let lines = longest == configuration.maxDatagramBytes
            ? "lines of up to \(longest) bytes (--max-datagram)"
            : "lines of up to \(longest) bytes (--max-datagram \(configuration.maxDatagramBytes), as rewritten)"
        let mirror = configuration.mirror.isEmpty ? "" : ", the mirror's \(sizing.mirrorSlots) included"
        return "io_uring allows at most \(RingSizing.maximumCompletionEntries) completions per ring, and this "
            + "configuration needs \(sizing.completionEntries) (\(sizing.receiveBuffers) receive buffers, "
            + "\(sizing.sendSlots) send slots\(mirror), \(RingSizing.completionSpare) spare): --packet-len "
            + "\(configuration.packetBytes) is small for \(lines); raise --packet-len, lower --max-datagram or "
            + "--receive-buffers, or run --io-backend portable"
    }

    private static func permissionAdvice(host: HostLimits) -> String {
        let sysctl = "kernel.io_uring_disabled"
        switch host.ioUringDisabled {
        case 2?:
            return "io_uring is disabled on this host (\(sysctl) = 2): allow it with `sysctl -w \(sysctl)=0` "
                + "(and in /etc/sysctl.d/ to keep it), or set it to 1 and run the relay in kernel.io_uring_group"
        case 1?:
            let group = host.ioUringGroup.flatMap { $0 >= 0 ? "group \($0)" : nil } ?? "no group (kernel.io_uring_group = -1)"
            return "io_uring is limited to kernel.io_uring_group (\(group)) and CAP_SYS_ADMIN (\(sysctl) = 1), and "
                + "the relay is in neither: run it with that group (SupplementaryGroups= in the systemd unit), or "
                + "`sysctl -w \(sysctl)=0`"
        default:
            let setting = host.ioUringDisabled.map { "\(sysctl) = \($0)" } ?? "this kernel has no \(sysctl)"
            return "io_uring is blocked by a seccomp filter (\(setting), so the sysctl is not the cause): container "
                + "runtimes' default seccomp profiles block it (Docker 25 and later, for one); allow the system calls "
                + "io_uring_setup, io_uring_enter and io_uring_register in the container's seccomp profile "
                + "(docker run --security-opt seccomp=PROFILE.json), or in systemd's SystemCallFilter="
        }
    }

    private static func memoryAdvice(configuration: RelayConfiguration, host: HostLimits) -> String {
        let perWorker = lockedBytesPerWorker(configuration)
        let needed = lockedBytesNeeded(configuration)
        let workers = configuration.threads == 1 ? "1 worker needs" : "\(configuration.threads) workers need"
        let parts = "\(kibibytes(perWorker)) each, and as much again for the start-up probe's ring, which the kernel "
            + "frees in the background"
        guard let limit = host.lockedMemoryBytes else {
            return "the kernel could not allocate memory for the rings (\(workers) \(kibibytes(needed)): \(parts); the "
                + "locked-memory limit is unlimited, so it is not the cause): free memory, or lower --threads"
        }
        let suggested = suggestedLockedBytes(needed: needed)
        return "the locked-memory limit (RLIMIT_MEMLOCK) is \(kibibytes(limit)) and \(workers) \(kibibytes(needed)) "
            + "(\(parts)): for a user without CAP_IPC_LOCK, Linux charges "
            + "every io_uring's rings and provided-buffer rings to it, summed over all of that user's processes "
            + "(a relay still exiting included). Raise it: LimitMEMLOCK=\(suggested >> 10)K in the systemd unit, "
            + "`ulimit -l \(suggested >> 10)` in the shell that starts the relay, "
            + "`docker run --ulimit memlock=\(suggested)`, or grant CAP_IPC_LOCK"
    }

    /// The locked-memory limit the advice suggests for `configuration`: twice what it needs
    /// (`lockedBytesNeeded`), in whole MiB, at least 1 MiB.
    public static func suggestedLockedBytes(_ configuration: RelayConfiguration) -> Int {
        suggestedLockedBytes(needed: lockedBytesNeeded(configuration))
    }

    /// Twice what is needed (room for a restart while the old relay's rings are still being
    /// torn down), in whole MiB, at least 1 MiB.
    private static func suggestedLockedBytes(needed: Int) -> Int {
        let mebibyte = 1 << 20
        return max(mebibyte, (2 * needed + mebibyte - 1) / mebibyte * mebibyte)
    }

    /// The lowest `RLIMIT_MEMLOCK` an io_uring relay of `configuration` starts under (a user
    /// without `CAP_IPC_LOCK`, nothing else of that user's pinned): every worker's ring and
    /// buffer ring, plus the start-up probe's, which has the same sizes and which the kernel
    /// frees in the background after the probe closes it, so it is still charged while the
    /// workers start.
    public static func lockedBytesNeeded(_ configuration: RelayConfiguration) -> Int {
        lockedBytesPerWorker(configuration) * (configuration.threads + 1)
    }

    /// The locked memory one io_uring worker's ring and provided-buffer ring are charged, in
    /// bytes, as Linux 6.x accounts them (`RingSizing.lockedBytes`). 108 KiB with the defaults.
    public static func lockedBytesPerWorker(_ configuration: RelayConfiguration) -> Int {
        configuration.ringSizing.lockedBytes()
    }

    /// The descriptors a relay needs at start-up, part by part.
    public struct DescriptorBudget: Sendable, Equatable {
        /// Open before the relay opens anything (standard input, output, error, inherited).
        public var alreadyOpen: Int
        /// Per worker: its ring, listening socket, wake-up and routing eventfds, and one
        /// socket per backend.
        public var perWorker: Int
        /// Workers.
        public var workers: Int
        /// The health monitor: its stop eventfd, and one socket per backend during a check.
        public var monitor: Int
        /// The admin endpoint (`--admin`, 0 with `none`): its event loop (two epoll instances,
        /// an eventfd, a timerfd), its listening socket, `AdminServer.maximumConnections`
        /// connections and a newcomer (`adminDescriptors`).
        public var admin: Int = 0
        /// Room for what comes and goes: name resolution, a backend socket replaced after an
        /// address change.
        public var spare: Int
        /// With `--control-socket`: per worker, a copy of each listening socket (TCP ones too) kept for a
        /// takeover (`ListenerRegistry`), and the control socket itself (in `spare`'s stead: 1).
        public var takeoverCopies: Int = 0

        /// Everything, the lowest open-files limit the relay starts under.
        public var total: Int { alreadyOpen + (perWorker + takeoverCopies) * workers + monitor + admin + spare + (takeoverCopies > 0 ? 1 : 0) }
    }

    /// What the admin endpoint takes: 5 as measured in `/proc/PID/fd` with and without it, a
    /// descriptor per connection it serves at once, and one for a newcomer accepted while the
    /// table is full (before the oldest idle one is closed, or itself refused). Budgeted for
    /// one connection, idle clients of the admin port took the descriptors the health checks
    /// needed.
    static let adminDescriptors = 5 + AdminServer.maximumConnections + 1

    /// What `configuration` needs, given `alreadyOpen` descriptors.
    public static func descriptorsNeeded(_ configuration: RelayConfiguration, alreadyOpen: Int) -> DescriptorBudget {
        let backends = configuration.backends.count
        return DescriptorBudget(
            alreadyOpen: alreadyOpen, perWorker: 4 + backends, workers: configuration.threads,
            monitor: 1 + (configuration.healthCheck == .none ? 0 : backends),
            admin: configuration.admin == "none" ? 0 : adminDescriptors, spare: 8,
            takeoverCopies: configuration.controlSocket == nil ? 0 : configuration.listenAddresses.count + configuration.tcpListenAddresses.count)
    }

    /// What the open-files limit should be for TCP ingest: the start-up budget
    /// (`descriptorsNeeded`), plus per worker a listening socket per TCP listener and its
    /// epoll instance, plus one descriptor per connection up to `--tcp-max-connections`.
    /// `nil` without TCP listeners.
    public static func descriptorsForTCPIngest(_ configuration: RelayConfiguration, alreadyOpen: Int) -> Int? {
        let listeners = configuration.tcpListenAddresses.count
        guard listeners > 0 else { return nil }
        return descriptorsNeeded(configuration, alreadyOpen: alreadyOpen).total + configuration.threads * (listeners + 1)
            + configuration.tcpMaxConnections
    }

    /// How the open-files limit is fitted to TCP ingest at start: the soft limit to raise, up
    /// to the hard one (as far as `--tcp-max-connections` needs), and a warning when even the
    /// hard limit leaves room for fewer connections than `--tcp-max-connections`.
    public struct TCPOpenFiles: Sendable, Equatable {
        /// The soft `RLIMIT_NOFILE` to set, or `nil` to leave it.
        public var raiseTo: UInt64?
        /// Why fewer connections than `--tcp-max-connections` can be open, or `nil`.
        public var warning: String?
    }

    /// The soft limit to raise for TCP ingest, and what to warn of (`TCPOpenFiles`).
    public static func tcpOpenFiles(_ configuration: RelayConfiguration, host: HostLimits) -> TCPOpenFiles {
        guard let wanted = descriptorsForTCPIngest(configuration, alreadyOpen: host.openDescriptors),
              let soft = host.openFiles, soft < UInt64(wanted) else { return TCPOpenFiles() }
        let reachable = min(UInt64(wanted), host.openFilesHard ?? UInt64(wanted))
        let raiseTo = reachable > soft ? reachable : nil
        guard reachable < UInt64(wanted) else { return TCPOpenFiles(raiseTo: raiseTo) }
        let room = max(0, Int(reachable) - (wanted - configuration.tcpMaxConnections))
        let warning = "the open-files limit (RLIMIT_NOFILE, hard \(reachable)) leaves room for about \(room) TCP ingest "
            + "connections of --tcp-max-connections \(configuration.tcpMaxConnections): more wait in the listen queue "
            + "(counted in statsrelay.tcp_accept_errors) until one closes. Raise it to \(wanted): LimitNOFILE=\(wanted) "
            + "in the systemd unit, `ulimit -n \(wanted)` in the shell that starts the relay, or lower --tcp-max-connections"
        return TCPOpenFiles(raiseTo: raiseTo, warning: warning)
    }

    /// A refusal naming how many descriptors are needed and how to allow them, or `nil` when
    /// the open-files limit is high enough.
    public static func checkDescriptors(_ configuration: RelayConfiguration, host: HostLimits = .current()) -> String? {
        let budget = descriptorsNeeded(configuration, alreadyOpen: host.openDescriptors)
        guard let limit = host.openFiles, limit < UInt64(budget.total) else { return nil }
        return "too few open files allowed: the relay needs \(budget.total) descriptors and RLIMIT_NOFILE is "
            + "\(limit): \(describe(budget)). \(raiseAdvice(budget.total, host: host))"
    }

    private static func descriptorAdvice(configuration: RelayConfiguration, host: HostLimits, errno: Errno) -> String {
        if errno.rawValue == ENFILE {
            return "the whole system is out of open files (fs.file-max): close descriptors elsewhere or raise fs.file-max"
        }
        let budget = descriptorsNeeded(configuration, alreadyOpen: host.openDescriptors)
        let limit = host.openFiles.map(String.init) ?? "unlimited"
        return "the open-files limit (RLIMIT_NOFILE, \(limit)) is too low: the relay needs about \(budget.total) "
            + "descriptors (\(describe(budget))). \(raiseAdvice(budget.total, host: host))"
    }

    private static func describe(_ budget: DescriptorBudget) -> String {
        let workers = budget.workers == 1 ? "1 worker" : "\(budget.workers) workers"
        let backends = budget.perWorker - 4
        return "\(budget.alreadyOpen) already open, \(budget.perWorker) per worker × \(workers) (ring, listening "
            + "socket, 2 eventfds, \(backends) backend socket\(backends == 1 ? "" : "s")), \(budget.monitor) for the "
            + "health monitor, \(budget.admin > 0 ? "\(budget.admin) for the admin endpoint, " : "")"
            + (budget.takeoverCopies > 0
                ? "\(budget.takeoverCopies) per worker and 1 for the control socket (--control-socket keeps a copy of each listening socket), " : "")
            + "\(budget.spare) spare"
    }

    private static func raiseAdvice(_ needed: Int, host: HostLimits) -> String {
        var advice = "Raise it to at least \(needed): `ulimit -n \(needed)` in the shell that starts the relay, "
            + "LimitNOFILE=\(needed) in the systemd unit, or `docker run --ulimit nofile=\(needed)`"
        if let hard = host.openFilesHard, hard < UInt64(needed) {
            advice += " (the hard limit is \(hard): only root can raise it)"
        }
        return advice
    }

    private static func kibibytes<Number: BinaryInteger>(_ bytes: Number) -> String { "\(bytes / 1024) KiB" }
}
