@testable import RelayKernel
import Dispatch
import Foundation
import Glibc
import Synchronization
import Testing
@testable import UringRelay

/// What a child `statsrelay` is started under, to take io_uring away from it as real hosts do.
///
/// Each is a `python3` program that changes its own process and then `execv`s `statsrelay`,
/// so the restriction holds for the relay (same process, same pid) and nothing else.
enum RelayLauncher: Sendable, CustomStringConvertible {
    /// A seccomp filter that fails `io_uring_setup` (syscall 425 on every architecture) with
    /// `EPERM`, as Docker's and containerd's default profiles do.
    case seccompBlocksIOUringSetup
    /// `RLIMIT_MEMLOCK` lowered to `bytes` and `CAP_IPC_LOCK` dropped from the bounding set (so
    /// root, too, is held to the limit), as for a non-root service with a low `LimitMEMLOCK=`.
    case memlockLimit(bytes: Int)
    /// `CAP_NET_ADMIN` dropped from the bounding set, so even root cannot pass
    /// `net.core.rmem_max` with `SO_RCVBUFFORCE`, as for an unprivileged service. (A launcher
    /// without the capability to drop carries on: the relay lacks it anyway.)
    case withoutNetAdmin

    var description: String {
        switch self {
        case .seccompBlocksIOUringSetup: "seccomp filter failing io_uring_setup with EPERM"
        case .memlockLimit(let bytes): "RLIMIT_MEMLOCK \(bytes / 1024)K without CAP_IPC_LOCK"
        case .withoutNetAdmin: "without CAP_NET_ADMIN"
        }
    }

    /// The launcher's mode argument.
    private var mode: String {
        switch self {
        case .seccompBlocksIOUringSetup: "seccomp"
        case .memlockLimit(let bytes): "memlock=\(bytes)"
        case .withoutNetAdmin: "no-net-admin"
        }
    }

    /// `python3 -c PROGRAM MODE`; the executable and its arguments follow.
    ///
    /// The seccomp program is four instructions: load the syscall number, compare it with 425
    /// (`io_uring_setup`), return `SECCOMP_RET_ERRNO | EPERM` if equal, `SECCOMP_RET_ALLOW`
    /// otherwise. `PR_SET_NO_NEW_PRIVS` first, as an unprivileged process would need it.
    /// A failing step exits with status 3 and says why, so a test can tell it from the relay.
    func command(python: URL) -> [String] {
        let program = """
            import ctypes, os, resource, sys
            libc = ctypes.CDLL(None, use_errno=True)
            def fail(step):
                sys.stderr.write("launcher: %s: %s\\n" % (step, os.strerror(ctypes.get_errno())))
                sys.exit(3)
            mode = sys.argv[1]
            if mode == "seccomp":
                class SockFilter(ctypes.Structure):
                    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]
                class SockFprog(ctypes.Structure):
                    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]
                program = (SockFilter * 4)(
                    SockFilter(0x20, 0, 0, 0),               # BPF_LD|BPF_W|BPF_ABS: seccomp_data.nr
                    SockFilter(0x15, 0, 1, 425),             # BPF_JMP|BPF_JEQ|BPF_K: io_uring_setup?
                    SockFilter(0x06, 0, 0, 0x00050000 | 1),  # BPF_RET: SECCOMP_RET_ERRNO | EPERM
                    SockFilter(0x06, 0, 0, 0x7fff0000))      # BPF_RET: SECCOMP_RET_ALLOW
                fprog = SockFprog(4, program)
                if libc.prctl(38, 1, 0, 0, 0) != 0: fail("prctl PR_SET_NO_NEW_PRIVS")
                if libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) != 0: fail("prctl PR_SET_SECCOMP")
            elif mode.startswith("memlock="):
                limit = int(mode.split("=")[1])
                resource.setrlimit(resource.RLIMIT_MEMLOCK, (limit, limit))
                if libc.prctl(24, 14, 0, 0, 0) != 0: fail("prctl PR_CAPBSET_DROP CAP_IPC_LOCK")
            elif mode == "no-net-admin":
                if libc.prctl(24, 12, 0, 0, 0) != 0 and os.geteuid() == 0: fail("prctl PR_CAPBSET_DROP CAP_NET_ADMIN")
            os.execv(sys.argv[2], sys.argv[2:])
            """
        return [python.path, "-c", program, mode]
    }

    /// `python3` from `PATH`, or `nil` when there is none.
    static var python: URL? {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        for directory in path.split(separator: ":") {
            let candidate = URL(fileURLWithPath: String(directory)).appendingPathComponent("python3")
            if FileManager.default.isExecutableFile(atPath: candidate.path) { return candidate }
        }
        return nil
    }

    /// `python3`, or cancels the test (reported as skipped) when the host has none.
    static func requirePython() throws -> URL {
        guard let python else { try Test.cancel("python3 is not installed: cannot restrict a child relay") }
        return python
    }
}

/// A thread sending `datagram(index)` for `index` in `0..<count` at `perSecond`, paced by the
/// monotonic clock (what is due each millisecond is sent, then the thread sleeps), from its
/// own socket on 127.0.0.1. Bounded by `count` and by `seconds`.
final class PacedSender: Sendable {
    private final class Shared: Sendable {
        let sent = Atomic<Int>(0)
        let failed = Atomic<Int>(0)
    }
    private let shared = Shared()
    private let thread: WorkerThreadHandle

    init(
        to address: SocketAddress, count: Int, perSecond: Int, seconds: Double = 20,
        datagram: @escaping @Sendable (Int) -> [UInt8]
    ) throws {
        let socket = SocketBox(try UDPSocket.bound(to: SocketAddress(numericHost: "127.0.0.1", port: 0)!))
        thread = WorkerThreadHandle(try WorkerThread(name: "test-paced", cpu: nil) { [shared] _ in
            let start = MonotonicClock.nanoseconds()
            let deadline = start + UInt64(seconds * 1e9)
            var index = 0
            while index < count {
                let now = MonotonicClock.nanoseconds()
                if now > deadline { break }
                let due = min(count, Int((now - start) * UInt64(perSecond) / 1_000_000_000) + 1)
                while index < due {
                    do { try socket.socket.send(datagram(index), to: address) } catch { shared.failed.add(1, ordering: .relaxed) }
                    index += 1
                }
                shared.sent.store(index, ordering: .relaxed)
                usleep(1_000)
            }
            shared.sent.store(index, ordering: .relaxed)
        })
    }

    /// Waits for the thread and returns how many datagrams it sent, and how many sends failed.
    func finish() -> (sent: Int, failed: Int) {
        thread.join()
        return (shared.sent.load(ordering: .relaxed), shared.failed.load(ordering: .relaxed))
    }
}
