import RelayKernel
import Testing
@testable import UringRelay

/// What `--control-socket` adds to the descriptors a relay with TCP ingest listeners needs.
@Suite("Takeover: descriptor budget with TCP listeners")
struct TCPTakeoverBudgetTests {
    @Test("with a control socket, each worker keeps a copy of each TCP listening socket too")
    func budget() throws {
        var configuration = RelayConfiguration(backends: [try BackendAddress(parsing: "127.0.0.1:1")])
        configuration.threads = 3
        configuration.admin = "none"
        configuration.tcpPort = 8126
        configuration.tcpListeners = [SocketAddress(numericHost: "127.0.0.1", port: 9126)!]
        let without = StartupDiagnosis.descriptorsNeeded(configuration, alreadyOpen: 3)
        configuration.controlSocket = "/run/statsrelay/control.sock"
        let with = StartupDiagnosis.descriptorsNeeded(configuration, alreadyOpen: 3)
        // One UDP listener and two TCP ones, per worker; and the control socket.
        #expect(with.takeoverCopies == 3)
        #expect(with.total == without.total + 3 * 3 + 1)
    }
}
