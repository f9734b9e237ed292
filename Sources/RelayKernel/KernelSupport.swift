import CLiburing
import Glibc

/// What the running kernel offers, probed once: tests skip and the relay explains itself
/// from this rather than failing deep inside a worker.
public enum KernelSupport {
    /// The kernel release (`uname -r`).
    public static var release: String {
        var names = utsname()
        uname(&names)
        return withUnsafeBytes(of: names.release) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
    }

    /// Why io_uring cannot be used here, or `nil` when a ring with a provided-buffer ring
    /// can be created (covers the `kernel.io_uring_disabled` sysctl, `ENOSYS` and `EPERM`).
    public static let unavailableReason: String? = {
        let ring: Ring
        do throws(Errno) { ring = try Ring(entries: 8, completionEntries: 16) } catch {
            switch error {
            case .noFunction: return "io_uring is not supported by kernel \(release) (ENOSYS)"
            case .notPermitted, .permissionDenied:
                return "io_uring is disabled here (kernel.io_uring_disabled or seccomp): \(error.operatorDescription)"
            default: return "io_uring_queue_init failed: \(error.operatorDescription)"
            }
        }
        do throws(Errno) { _ = try ProvidedBufferRing(ring: ring, groupID: 0, count: 2, payloadBytes: 64) } catch {
            return "provided-buffer rings are not supported (Linux 5.19+ needed): \(error.operatorDescription)"
        }
        return nil
    }()

    /// Whether io_uring with provided-buffer rings works here.
    public static var isAvailable: Bool { unavailableReason == nil }
}
