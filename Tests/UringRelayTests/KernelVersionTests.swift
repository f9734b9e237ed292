import RelayKernel
import Testing

/// `KernelSupport.version(of:)` and what the relay concludes from it: whether the kernel's
/// reuseport selection honours `SO_INCOMING_CPU` (`--reuseport-steering cpu`), a feature that
/// cannot be probed without sending.
@Suite("Kernel release versions")
struct KernelVersionTests {
    @Test("a release string's version, the patch level 0 where it has none", arguments: [
        ("6.18.44-fc-v1252", 6, 18, 44),
        ("6.1.0-13-amd64", 6, 1, 0),
        ("5.15.0-91-generic", 5, 15, 0),
        ("5.15.86", 5, 15, 86),
        ("4.19", 4, 19, 0),
        ("6.10-rc3", 6, 10, 0),
        ("6.9+", 6, 9, 0),
    ])
    func parses(release: String, major: Int, minor: Int, patch: Int) {
        let version = KernelSupport.version(of: release)
        #expect(version?.major == major && version?.minor == minor && version?.patch == patch, "\(release) → \(String(describing: version))")
    }

    @Test("no version from a release that does not start with two numbers", arguments: ["", "6", "linux-6.1", "6..1", ".6.1", "x.y.z"])
    func refuses(release: String) {
        #expect(KernelSupport.version(of: release) == nil)
    }

    @Test("selection by SO_INCOMING_CPU from 6.2 and the stable releases it was backported to", arguments: [
        ("6.18.44-fc-v1252", true), ("6.2.0", true), ("7.0", true),
        ("6.1.2", true), ("6.1.1", false), ("6.1.0-13-amd64", false),
        ("6.0.16", true), ("6.0.15", false),
        ("5.15.86", true), ("5.15.0-91-generic", false),
        ("5.10.200", false), ("4.19", false), ("garbage", false),
    ])
    func incomingCPUSelection(release: String, selects: Bool) {
        #expect(KernelSupport.selectsReusePortByIncomingCPU(release: release) == selects)
    }
}
