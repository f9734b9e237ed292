@testable import RelayKernel
import Testing
@testable import UringRelay

/// `--health-check` and `--on-backend-down` as typed options, through the `statsrelay`
/// executable (`run` and `hash` share them). No relay starts, so no io driver is involved.
@Suite("statsrelay health options", .timeLimit(.minutes(1)), .onOwnThread)
struct HealthOptionsTests {
    @Test("an unknown mode or policy exits 64 naming the bad value and every allowed one", arguments: [
        (["--health-check", "http", "127.0.0.1:9"], "The value 'http' is invalid for '--health-check <mode>'",
         "'none', 'tcp' or 'statsd-admin'"),
        (["--on-backend-down", "retry", "127.0.0.1:9"], "The value 'retry' is invalid for '--on-backend-down <policy>'",
         "'rehash', 'hold' or 'drop'"),
        (["hash", "--backends", "127.0.0.1:9", "--health-check", "TCP", "foo"], "The value 'TCP' is invalid for '--health-check <mode>'",
         "'none', 'tcp' or 'statsd-admin'"),
        (["hash", "--backends", "127.0.0.1:9", "--on-backend-down", "", "foo"], "The value '' is invalid for '--on-backend-down <policy>'",
         "'rehash', 'hold' or 'drop'"),
    ])
    func badValue(_ arguments: [String], _ message: String, _ allowed: String) throws {
        let result = try RelayProcess.run(arguments)
        #expect(result.status == 64)
        #expect(result.error.contains(message), "stderr: \(result.error)")
        #expect(result.error.contains(allowed), "stderr: \(result.error)")
    }

    @Test("statsrelay hash with its only backend failing a tcp check: rehash and drop fail open to it, hold holds",
          arguments: DownPolicy.allCases)
    func hashFailsOpen(_ policy: DownPolicy) throws {
        // UDP only: its TCP port is held by a socket that does not listen, so connects are
        // refused (and no listener another test opens meanwhile can take the port).
        let (backends, twins) = try backendsWithHealthTwins(1)
        let backend = backends[0]
        twins[0].close()
        defer { withExtendedLifetime(twins) {} }
        let result = try RelayProcess.run([
            "hash", "--backends", backend.spec, "--health-check", "tcp", "--health-timeout", "200ms",
            "--on-backend-down", policy.rawValue, "foo",
        ])
        #expect(result.status == 0)
        #expect(result.error.contains("backend \(backend.spec) is down: connect: Connection refused"), "stderr: \(result.error)")
        let line = result.output.split(separator: "\n").first.map(String.init) ?? ""
        #expect(line.hasPrefix("foo \(backend.spec) index=0 "), "\(line)")
        #expect(line.hasSuffix("(down: held until it recovers)") == (policy == .hold), "\(line)")
        #expect(!line.contains("dropped"))
    }
}
