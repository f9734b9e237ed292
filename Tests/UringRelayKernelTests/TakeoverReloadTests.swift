@testable import RelayKernel
import Foundation
import Glibc
import Testing
@testable import UringRelay

/// A reload and a takeover never change the listener set at once: a listener added after the
/// offer would not be handed over, one removed would close under the new relay.
@Suite("Reload during a takeover", .serialized, .timeLimit(.minutes(1)), .onOwnThread)
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

    @Test(
        "a relay reloaded so that it runs its listeners in another order than its file lists them is taken over by a new relay started with that file, datagram and TCP listeners alike",
        arguments: ioDrivers)
    func reorderedByReload(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let control = TakeoverTests.ControlPath()
        let first = SocketAddress(numericHost: "127.0.0.1", port: try unusedPort())!
        let second = SocketAddress(numericHost: "127.0.0.1", port: try unusedPort())!
        let firstTCP = SocketAddress(numericHost: "127.0.0.1", port: try unusedTCPPort())!
        let secondTCP = SocketAddress(numericHost: "127.0.0.1", port: try unusedTCPPort())!
        let file = try TemporaryConfigFile(Self.yaml(listeners: [first.description, "tcp:\(firstTCP)"], control: control.path, backend: backend))
        let cpu = "\(nextTestCPU())"
        let old = try RelayProcess(driver: driver, ["--config", file.path, "--cpus", cpu])
        #expect(try old.listenAddress() == first)
        #expect(old.waitForLog("control socket on \(control.path)"), "\(old.standardError)")
        // The file now lists each added listener before the kept one; the reload runs the kept
        // ones first (first, tcp:firstTCP), then the added ones (second, tcp:secondTCP).
        try file.write(Self.yaml(
            listeners: [second.description, "tcp:\(secondTCP)", first.description, "tcp:\(firstTCP)"], control: control.path, backend: backend))
        old.signal(SIGHUP)
        #expect(old.waitForLog("reload: applied", seconds: 10), "\(old.standardError)")

        let new = try RelayProcess(driver: driver, ["--config", file.path, "--cpus", cpu, "--takeover", control.path])
        #expect(try new.listenAddress() == second, "the new relay's first listener is its file's first")
        #expect(new.waitForLog("takeover complete"), "\(new.standardError)")
        #expect(old.waitForExit() == 0, "\(old.standardError)")
        #expect(old.standardError.contains("handed over: the new relay receives on the listening sockets"), "\(old.standardError)")

        try send(["via.first:1|c"], to: first)
        try send(["via.second:1|c"], to: second)
        for (address, line) in [(firstTCP, "via.first.tcp:1|c"), (secondTCP, "via.second.tcp:1|c")] {
            let client = try TCPIngestClient(to: address)
            try client.write(line + "\n")
            client.finish()
        }
        let expected: Set = ["via.first:1|c", "via.second:1|c", "via.first.tcp:1|c", "via.second.tcp:1|c"]
        #expect(Set(try collect(from: [backend], expectedLines: expected.count).lines[0]) == expected)
        new.signal(SIGTERM)
        #expect(new.waitForExit() == 0, "\(new.standardError)")
        #expect(new.counter("statsrelay.lines_forwarded") == UInt64(expected.count), "\(new.standardError)")
        #expect(old.counter("statsrelay.lines_forwarded") == 0, "\(old.standardError)")
        #expect(new.standardError.contains("io_backend=\(driver.rawValue)"))
    }
}
