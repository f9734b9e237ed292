@testable import RelayKernel
import Foundation
import Glibc
import Testing
@testable import UringRelay

/// A reload and a takeover never change the listener set at once: a listener added after the
/// offer would not be handed over, one removed would close under the new relay.
@Suite("Reload during a takeover", .serialized, .timeLimit(.minutes(1)))
struct TakeoverReloadTests {
    static func yaml(listeners: [String], control: String, backend: TestBackend) -> String {
        """
        listeners: [\(listeners.map { "\"\($0)\"" }.joined(separator: ", "))]
        threads: 1
        control-socket: \(control)
        backends:
          - \(backend.spec)
        """
    }

    @Test(
        "a reload adding a listener while a takeover holds the offer is refused and counted, the listener not bound; once the takeover fails the same reload adds it and it relays",
        arguments: ioDrivers)
    func reloadRefusedDuringTakeover(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let control = TakeoverTests.ControlPath()
        // Free ports below the ephemeral range (`unusedPort()`), bound by the relay.
        let first = SocketAddress(numericHost: "127.0.0.1", port: try unusedPort())!
        let second = SocketAddress(numericHost: "127.0.0.1", port: try unusedPort())!
        let file = try TemporaryConfigFile(Self.yaml(listeners: [first.description], control: control.path, backend: backend))
        let relay = try RelayProcess(driver: driver, ["--config", file.path, "--cpus", "\(nextTestCPU())"])
        #expect(try relay.listenAddress() == first)
        #expect(relay.waitForLog("control socket on \(control.path)"), "\(relay.standardError)")

        do {
            // A successor that takes the offer and never says `ready`.
            let held = try TakeoverTests.takeOffer(control: control, address: first, relay: relay)

            try file.write(Self.yaml(listeners: [first.description, second.description], control: control.path, backend: backend))
            relay.signal(SIGHUP)
            #expect(relay.waitForLog("a takeover is under way: the listeners cannot change now", seconds: 10), "\(relay.standardError)")
            #expect(relay.standardError.contains("reload refused"), "\(relay.standardError)")
            // Nothing bound the second port: a socket of the test's own can take it.
            #expect((try? UDPSocket.bound(to: second)) != nil, "the refused reload bound \(second)")
            // The successor goes away without `ready`.
            _ = consume held
        }
        #expect(relay.waitForLog("takeover failed in the new relay; this one keeps running"), "\(relay.standardError)")

        relay.signal(SIGHUP)
        #expect(relay.waitForLog("reload: applied", seconds: 10), "\(relay.standardError)")
        #expect(relay.standardError.contains(second.description), "\(relay.standardError)")
        try send(["via.second:1|c"], to: second)
        try send(["via.first:1|c"], to: first)
        #expect(Set(try collect(from: [backend], expectedLines: 2).lines[0]) == ["via.second:1|c", "via.first:1|c"])
        relay.signal(SIGTERM)
        #expect(relay.waitForExit() == 0, "\(relay.standardError)")
        #expect(relay.standardError.contains("io_backend=\(driver.rawValue)"))
        #expect(relay.counter("statsrelay.config_reloads{result=\"failure\"}") == 1)
        #expect(relay.counter("statsrelay.config_reloads{result=\"success\"}") == 1)
    }
}
