@testable import RelayKernel
import Glibc
import Testing
@testable import UringRelay

@Suite("Start-up failures explained")
struct StartupDiagnosisTests {
    /// One worker, one backend, the defaults: the configuration the messages below describe.
    static let configuration: RelayConfiguration = {
        var configuration = RelayConfiguration(backends: [try! BackendAddress(parsing: "127.0.0.1:9001")])
        configuration.threads = 2
        return configuration
    }()

    static let queueInit = SystemCallError("io_uring_queue_init", "", Errno(rawValue: EPERM))

    @Test("EPERM with kernel.io_uring_disabled = 2: the sysctl, its value and how to allow io_uring")
    func disabledBySysctl() {
        let text = StartupDiagnosis.explain(Self.queueInit, configuration: Self.configuration, host: HostLimits(ioUringDisabled: 2))
        #expect(text == "io_uring_queue_init: Operation not permitted (errno 1): io_uring is disabled on this host "
            + "(kernel.io_uring_disabled = 2): allow it with `sysctl -w kernel.io_uring_disabled=0` (and in "
            + "/etc/sysctl.d/ to keep it), or set it to 1 and run the relay in kernel.io_uring_group")
    }

    @Test("EPERM with kernel.io_uring_disabled = 1: the group that may use io_uring, and how to join it")
    func limitedToGroup() {
        let text = StartupDiagnosis.explain(
            Self.queueInit, configuration: Self.configuration, host: HostLimits(ioUringDisabled: 1, ioUringGroup: 995))
        #expect(text.hasPrefix("io_uring_queue_init: Operation not permitted (errno 1): io_uring is limited to "
            + "kernel.io_uring_group (group 995) and CAP_SYS_ADMIN (kernel.io_uring_disabled = 1)"))
        #expect(text.contains("SupplementaryGroups="))
        let noGroup = StartupDiagnosis.explainIOUring(
            Errno(rawValue: EPERM), configuration: Self.configuration, host: HostLimits(ioUringDisabled: 1, ioUringGroup: -1))
        #expect(noGroup?.contains("(no group (kernel.io_uring_group = -1))") == true)
    }

    @Test("EPERM with the sysctl at 0 or absent: a seccomp filter, and the three system calls to allow", arguments: [0, nil] as [Int?])
    func blockedBySeccomp(_ sysctl: Int?) throws {
        let text = try #require(StartupDiagnosis.explainIOUring(
            Errno(rawValue: EPERM), configuration: Self.configuration, host: HostLimits(ioUringDisabled: sysctl)))
        #expect(text.hasPrefix("io_uring is blocked by a seccomp filter ("
            + (sysctl == nil ? "this kernel has no kernel.io_uring_disabled" : "kernel.io_uring_disabled = 0")
            + ", so the sysctl is not the cause)"))
        #expect(text.contains("io_uring_setup, io_uring_enter and io_uring_register"))
    }

    /// (--packet-len, --max-datagram, --receive-buffers, mirror backends, --metrics-prefix, whether
    /// the ring is over the kernel's 65 536 completions).
    static let completionCases: [(Int, Int, Int, Int, String, Bool)] = [
        (1_400, 8_192, 128, 0, "", false),  // the defaults: 1 216
        (64, 65_535, 128, 0, "", false),  // 12 496
        (64, 65_535, 128, 0, "twenty.characters.ab", true),  // lines counted as rewritten: 98 524
        (64, 65_535, 32_768, 1, "", false),  // 57 440: a mirror doubles the send slots
        (16, 65_535, 32_768, 1, "", true),  // 131 168
        (2, 65_535, 128, 0, "", true),  // 393 424
    ]

    @Test("EINVAL from a ring over 65 536 completions names that limit, the count needed and the options that size it; any other EINVAL a kernel too old", arguments: completionCases)
    func completionLimit(packet: Int, maxDatagram: Int, receiveBuffers: Int, mirrors: Int, prefix: String, over: Bool) throws {
        var configuration = Self.configuration
        configuration.packetBytes = packet
        configuration.maxDatagramBytes = maxDatagram
        configuration.receiveBuffers = receiveBuffers
        configuration.mirror = try (0..<mirrors).map { try BackendAddress(parsing: "127.0.0.1:\(9100 + $0)") }
        configuration.rewrite = try LineRewrite(prefix: prefix, tags: "")
        // The queue asked for, from the documented formulas: a datagram of D bytes holds at most
        // D / 3 + 1 lines, each grown by `P.`; a reserve of 3 × (datagram ÷ packet + 1) +
        // 2 × backends + 2 slots, four reserves and at least 1 024, as many again for a mirror
        // pool of its size, plus the receive buffers and 64 spare.
        let longest = maxDatagram + (prefix.isEmpty ? 0 : (maxDatagram / 3 + 1) * (prefix.utf8.count + 1))
        func slots(_ backends: Int) -> Int { max(1_024, 4 * (3 * (longest / packet + 1) + 2 * backends + 2)) }
        let needed = receiveBuffers + slots(1) + (mirrors > 0 ? slots(mirrors) : 0) + 64
        #expect((needed > 65_536) == over, "\(needed) completions")
        let text = try #require(StartupDiagnosis.explainIOUring(Errno(rawValue: EINVAL), configuration: configuration))
        if over {
            #expect(text.hasPrefix("io_uring allows at most 65536 completions per ring, and this configuration needs \(needed) "))
            let lines = prefix.isEmpty
                ? "lines of up to \(maxDatagram) bytes (--max-datagram)"
                : "lines of up to \(longest) bytes (--max-datagram \(maxDatagram), as rewritten)"
            #expect(text.contains("--packet-len \(packet) is small for \(lines)"), "\(text)")
            #expect(text.hasSuffix("or run --io-backend portable"))
        } else {
            #expect(text.contains("rejected an io_uring feature"))
        }
    }

    /// (soft, hard open-files limits, whether TCP ingest is on, the soft limit expected to be
    /// set, whether a warning is expected).
    static let tcpOpenFilesCases: [(UInt64, UInt64?, Bool, Bool, Bool)] = [
        (1_024, 524_288, true, true, false),  // raised to what is needed, the hard limit allows it
        (1_024, nil, true, true, false),  // an unlimited hard limit
        (1_024, 2_048, true, true, true),  // raised to the hard limit, still short: warned
        (1_024, 1_024, true, false, true),  // nothing to raise: warned
        (1_000_000, 1_000_000, true, false, false),  // enough already
        (1_024, 524_288, false, false, false),  // no TCP ingest: left alone
    ]

    @Test("TCP ingest: the soft open-files limit is raised towards the hard one for --tcp-max-connections, with a warning naming the connections room when the hard limit is short", arguments: tcpOpenFilesCases)
    func tcpOpenFiles(soft: UInt64, hard: UInt64?, tcp: Bool, raised: Bool, warned: Bool) {
        var configuration = Self.configuration
        configuration.tcpPort = tcp ? 8125 : nil
        configuration.tcpMaxConnections = 10_000
        // As docs/operations.md states it: 3 open, per worker a ring, a listening socket, 2
        // eventfds and a socket per backend, the monitor's eventfd, 5, a descriptor per
        // connection (64) and a newcomer's for the admin endpoint,
        // 8 spare; then per worker a TCP listening socket and an epoll instance, and a
        // descriptor per connection.
        let wanted: UInt64 = 3 + 2 * (4 + 1) + 1 + (5 + 64 + 1) + 8 + 2 * (1 + 1) + 10_000
        let fit = StartupDiagnosis.tcpOpenFiles(
            configuration, host: HostLimits(openFiles: soft, openFilesHard: hard, openDescriptors: 3))
        #expect(fit.raiseTo == (raised ? min(wanted, hard ?? wanted) : nil))
        #expect((fit.warning != nil) == warned)
        if let warning = fit.warning, let hard {
            let room = Int(hard) - Int(wanted - 10_000)
            #expect(warning.hasPrefix("the open-files limit (RLIMIT_NOFILE, hard \(hard)) leaves room for about \(room) TCP ingest connections of --tcp-max-connections 10000"), "\(warning)")
            #expect(warning.contains("LimitNOFILE=\(wanted)"))
        }
    }

    @Test("ENOMEM under a locked-memory limit: the limit, what the workers need, and LimitMEMLOCK= / ulimit -l")
    func lockedMemory() {
        let error = SystemCallError("io_uring_queue_init", "", Errno(rawValue: ENOMEM))
        let text = StartupDiagnosis.explain(error, configuration: Self.configuration, host: HostLimits(lockedMemoryBytes: 96 << 10))
        // (2 workers + the probe) × (64 KiB of SQEs + 40 KiB of CQ ring + 4 KiB of buffer ring): a
        // relay of 2 workers started under 324 KiB and failed under 320 KiB on Linux 6.18.
        #expect(text == "io_uring_queue_init: Cannot allocate memory (errno 12): the locked-memory limit "
            + "(RLIMIT_MEMLOCK) is 96 KiB and 2 workers need 324 KiB (108 KiB each, and as much again for the "
            + "start-up probe's ring, which the kernel frees in the background): for a user without "
            + "CAP_IPC_LOCK, Linux charges every io_uring's rings and provided-buffer rings to it, summed over all "
            + "of that user's processes (a relay still exiting included). Raise it: LimitMEMLOCK=1024K in the "
            + "systemd unit, `ulimit -l 1024` in the shell that starts the relay, `docker run --ulimit "
            + "memlock=1048576`, or grant CAP_IPC_LOCK")
    }

    @Test("ENOMEM with no locked-memory limit says the limit is not the cause")
    func memoryWithoutLimit() throws {
        let text = try #require(StartupDiagnosis.explainIOUring(
            Errno(rawValue: ENOMEM), configuration: Self.configuration, host: HostLimits(lockedMemoryBytes: nil)))
        #expect(text.contains("the locked-memory limit is unlimited, so it is not the cause"))
    }

    /// Each amount is where a relay started and 4 KiB less failed, on Linux 6.18 as an
    /// unprivileged user (`prlimit --memlock`).
    @Test("the locked memory needed grows with receive buffers and backends", arguments: [
        (128, 1, 8192, 108 << 10),
        // 4096 receive buffers: a 8192-entry CQ (128 KiB + 4 KiB SQ array + header) and a 64 KiB buffer ring.
        (4096, 1, 8192, (64 + 136 + 64) << 10),
        // 300 backends: 4 × (18 + 600 + 2) = 2480 send slots, so a 4096-entry CQ.
        (128, 300, 8192, (64 + 72 + 4) << 10),
    ])
    func lockedBytes(_ buffers: Int, _ backendCount: Int, _ maxDatagram: Int, _ bytes: Int) throws {
        var configuration = RelayConfiguration(backends: try (0..<backendCount).map { try BackendAddress(parsing: "10.0.\($0 / 250).\($0 % 250 + 1):8125") })
        configuration.receiveBuffers = buffers
        configuration.maxDatagramBytes = maxDatagram
        #expect(StartupDiagnosis.lockedBytesPerWorker(configuration) == bytes)
    }

    @Test("errors with nothing to add pass through unchanged")
    func passThrough() {
        let bind = SystemCallError("bind udp", "0.0.0.0:8125", Errno(rawValue: EADDRINUSE))
        #expect(StartupDiagnosis.explain(bind, configuration: Self.configuration, host: HostLimits()) == bind.description)
        let ring = SystemCallError("io_uring_enter", "", Errno(rawValue: EBADF))
        #expect(StartupDiagnosis.explain(ring, configuration: Self.configuration, host: HostLimits()) == ring.description)
    }

    @Test("the descriptors needed, part by part: stdio, each worker's ring, socket, eventfds and backends, the monitor, the admin endpoint")
    func descriptorBudget() throws {
        var configuration = RelayConfiguration(backends: try ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"].map { try BackendAddress(parsing: $0) })
        configuration.threads = 2
        configuration.admin = "none"
        let plain = StartupDiagnosis.descriptorsNeeded(configuration, alreadyOpen: 3)
        #expect(plain == .init(alreadyOpen: 3, perWorker: 7, workers: 2, monitor: 1, admin: 0, spare: 8))
        #expect(plain.total == 26)
        configuration.admin = AdminAddress.defaultSpec
        // Measured: the endpoint's event loop has two epoll instances, an eventfd and a
        // timerfd; then its listening socket, a descriptor per connection it serves (64) and
        // one for a newcomer accepted while they are all open.
        #expect(StartupDiagnosis.descriptorsNeeded(configuration, alreadyOpen: 3).total == 26 + 5 + 64 + 1)
        configuration.healthCheck = .tcp
        #expect(StartupDiagnosis.descriptorsNeeded(configuration, alreadyOpen: 3).monitor == 4)
    }

    @Test("too low an open-files limit is refused with the number needed and how to raise it; enough passes")
    func descriptorCheck() throws {
        var configuration = Self.configuration
        configuration.threads = 1
        configuration.admin = "none"
        let refusal = try #require(StartupDiagnosis.checkDescriptors(
            configuration, host: HostLimits(openFiles: 8, openFilesHard: 8, openDescriptors: 3)))
        #expect(refusal == "too few open files allowed: the relay needs 17 descriptors and RLIMIT_NOFILE is 8: 3 "
            + "already open, 5 per worker × 1 worker (ring, listening socket, 2 eventfds, 1 backend socket), 1 for "
            + "the health monitor, 8 spare. Raise it to at least 17: `ulimit -n 17` in the shell that starts the "
            + "relay, LimitNOFILE=17 in the systemd unit, or `docker run --ulimit nofile=17` (the hard limit is 8: "
            + "only root can raise it)")
        #expect(StartupDiagnosis.checkDescriptors(configuration, host: HostLimits(openFiles: 17, openDescriptors: 3)) == nil)
        #expect(StartupDiagnosis.checkDescriptors(configuration, host: HostLimits(openFiles: nil, openDescriptors: 3)) == nil)
    }

    @Test("EMFILE from any call names the open-files limit and the number needed")
    func tooManyOpenFiles() {
        let error = SystemCallError("socket udp", "127.0.0.1:39002", Errno(rawValue: EMFILE))
        let text = StartupDiagnosis.explain(error, configuration: Self.configuration, host: HostLimits(openFiles: 8, openDescriptors: 3))
        #expect(text.hasPrefix("socket udp 127.0.0.1:39002: Too many open files (errno 24): the open-files limit "
            + "(RLIMIT_NOFILE, 8) is too low: the relay needs about 92 descriptors"))
        // 3 open + 2 workers × (ring, socket, 2 eventfds, 1 backend) + the monitor's eventfd +
        // the admin endpoint (on by default: 5, 64 connections and a newcomer) + 8 spare.
        #expect(text.contains("1 for the health monitor, 70 for the admin endpoint, 8 spare"))
        #expect(text.contains("LimitNOFILE=92"))
    }

    @Test("this host's limits are read: the open-files limit and the descriptors open now")
    func currentLimits() {
        let host = HostLimits.current()
        var limit = rlimit()
        getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit)
        #expect(host.openFiles == (limit.rlim_cur == rlim_t.max ? nil : UInt64(limit.rlim_cur)))
        #expect(host.openDescriptors >= 3)
        #expect(host.kernelRelease == KernelSupport.release)
    }
}
