import RelayKernel
import Testing

/// `KernelSupport.version(of:)`: what the relay reads from `uname -r` to decide whether a kernel
/// feature it cannot probe (the reuseport selection by `SO_INCOMING_CPU`, Linux 6.1) is there.
@Suite("Kernel release versions")
struct KernelVersionTests {
    @Test("a release string's major and minor version, or nil", arguments: [
        ("6.18.44-fc-v1252", 6, 18),
        ("6.1.0-13-amd64", 6, 1),
        ("5.15.0-91-generic", 5, 15),
        ("4.19", 4, 19),
        ("6.10-rc3", 6, 10),
        ("6.9+", 6, 9),
    ])
    func parses(release: String, major: Int, minor: Int) {
        let version = KernelSupport.version(of: release)
        #expect(version?.major == major && version?.minor == minor, "\(release) → \(String(describing: version))")
    }

    @Test("no version from a release that does not start with two numbers", arguments: ["", "6", "linux-6.1", "6..1", ".6.1", "x.y.z"])
    func refuses(release: String) {
        #expect(KernelSupport.version(of: release) == nil)
    }

    @Test("the running kernel reads as a version, and is at least itself but not newer than the next major")
    func running() throws {
        let version = try #require(KernelSupport.version(of: KernelSupport.release), "uname -r: \(KernelSupport.release)")
        #expect(KernelSupport.isAtLeast(version.major, version.minor))
        #expect(!KernelSupport.isAtLeast(version.major + 1, 0))
    }
}
