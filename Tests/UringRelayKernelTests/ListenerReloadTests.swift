@testable import RelayKernel
import Dispatch
import Foundation
import Glibc
import Synchronization
import Testing
@testable import UringRelay

/// Listeners added and removed by a reload (`Relay.reload`, what SIGHUP runs): a new listener
/// is bound before any worker is told (a bind error refuses the reload, nothing changed); a
/// removed one is drained in every worker, what its socket held relayed, not dropped.
@Suite("UDP listeners reloaded", .serialized, .timeLimit(.minutes(1)), .onOwnThread)
struct ListenerReloadTests {
    /// Sends one-line datagrams `live.N:1|c` from one socket until stopped (at most 100 000, at
    /// most 10 s), counting them; signals once `startAfter` are sent.
    final class LiveSender: @unchecked Sendable {  // its state is atomics and semaphores
        let sent = Atomic<Int>(0)
        let stopping = Atomic<Bool>(false)
        let started = DispatchSemaphore(value: 0)
        let ended = DispatchSemaphore(value: 0)

        init(to address: SocketAddress, startAfter: Int) throws {
            let socket = SocketBox(try UDPSocket.bound(to: SocketAddress(numericHost: "127.0.0.1", port: 0)!))
            DispatchQueue.global().async { [self] in
                let deadline = MonotonicClock.nanoseconds() + 10_000_000_000
                for index in 0..<100_000 {
                    if stopping.load(ordering: .acquiring) || MonotonicClock.nanoseconds() > deadline { break }
                    // A send refused (the port closed) is not retried: the line was not sent.
                    if (try? socket.socket.send(Array("live.\(index):1|c".utf8), to: address)) != nil {
                        sent.store(index + 1, ordering: .releasing)
                    }
                    if index + 1 == startAfter { started.signal() }
                    // About 20 000 lines/s: live traffic that two workers never fall behind.
                    if index % 20 == 19 { usleep(1_000) }
                }
                started.signal()
                ended.signal()
            }
        }

        func stop() {
            stopping.store(true, ordering: .releasing)
            ended.wait()
        }
    }

    @Test("under live traffic a reload moves the relay from one listener to another: the new one receives, the removed one stops receiving, and every line sent to it before the reload began arrives exactly once", arguments: ioDrivers)
    func moveListener(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backends = try (0..<2).map { _ in try TestBackend() }
        let relay = try InProcessRelay(backends: backends, driver: driver) { configuration in
            configuration.threads = 2
            let cpu = nextTestCPU()
            configuration.cpus = [cpu, cpu]
        }
        #expect(relay.relay.driver == driver)
        let old = relay.address
        // A free port for the new listener (`unusedPort()`), bound by the reload.
        let newPort = try unusedPort()
        let new = SocketAddress(numericHost: "127.0.0.1", port: newPort)!

        let sender = try LiveSender(to: old, startAfter: 2_000)
        sender.started.wait()
        // A burst just before the reload, so the removed listener's sockets still hold
        // datagrams when the workers take the removal: those must be relayed, not dropped.
        let burst = (0..<3_000).map { "burst.\($0):1|c" }
        try send(burst, to: old)
        let before = sender.sent.load(ordering: .acquiring)
        var next = relay.relay.configurationInForce
        next.port = newPort
        let plan = try relay.relay.reload(to: next)
        let after = sender.sent.load(ordering: .acquiring)
        sender.stop()
        #expect(plan.applied.map(\.key) == ["listeners"])
        #expect(plan.workersNotApplied == 0)
        #expect(relay.relay.listenAddresses == [new])

        let fresh = (0..<50).map { "fresh.\($0):1|c" }
        try send(fresh, to: new)
        // The old port is closed in every worker: nothing sent to it now is relayed.
        try? send((0..<50).map { "late.\($0):1|c" }, to: old)
        // Not a count of lines: some live lines sent during the reload may be refused, and more
        // than `before` arrive. Done once every line that must arrive has, then 200 ms more.
        let received = try collect(from: backends, settleMilliseconds: 200) { received in
            let lines = Set(received.lines.flatMap { $0 })
            return (0..<before).allSatisfy { lines.contains("live.\($0):1|c") }
                && burst.allSatisfy(lines.contains) && fresh.allSatisfy(lines.contains)
        }
        let lines = received.lines.flatMap { $0 }
        let live = lines.filter { $0.hasPrefix("live.") }
        #expect(Set(live).count == live.count, "no live line twice")
        let indices = Set(live.compactMap { Int($0.dropFirst(5).prefix { $0 != ":" }) })
        let missing = (0..<before).filter { !indices.contains($0) }
        #expect(missing.isEmpty, "\(missing.count) of the \(before) lines sent before the reload lost, first \(missing.prefix(5))")
        #expect(indices.allSatisfy { $0 < after }, "a line sent after the reload returned arrived")
        #expect(lines.filter { $0.hasPrefix("burst.") }.sorted() == burst.sorted(), "every burst line once")
        #expect(lines.filter { $0.hasPrefix("fresh.") }.sorted() == fresh.sorted())
        #expect(!lines.contains { $0.hasPrefix("late.") })
        for (index, backendLines) in received.lines.enumerated() {
            #expect(backendLines.allSatisfy { expectedBackend(of: $0, backends: 2) == index }, "backend \(index)")
        }

        let counters = relay.stop()
        #expect(counters[.datagramsReceived, listener: "udp:\(new)"] == UInt64(fresh.count))
        #expect(counters[.datagramsReceived, listener: "udp:\(old)"] == UInt64(live.count + burst.count))
        #expect(counters[.datagramsDroppedKernel] == 0)
    }

    @Test("a reload adding a listener on a port another socket holds is refused with the address and errno, and changes nothing", arguments: ioDrivers)
    func bindError(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let relay = try InProcessRelay(backends: [backend], driver: driver)
        #expect(relay.relay.driver == driver)
        let holder = try UDPSocket.bound(to: SocketAddress(numericHost: "127.0.0.1", port: 0)!)
        var next = relay.relay.configurationInForce
        next.additionalListeners = [holder.localAddress]
        next.packetBytes = 500
        do {
            _ = try relay.relay.reload(to: next)
            Issue.record("the reload was not refused")
        } catch let error as ConfigurationError {
            #expect(error.argument == "listeners[1]")
            #expect(error.value == holder.localAddress.description)
            #expect(error.reason.contains("errno 98"), "\(error.reason)")
        }
        #expect(relay.relay.listenAddresses == [relay.address])
        #expect(relay.relay.configurationInForce.packetBytes != 500)
        #expect(relay.relay.reloads.failed == 1)
        try send(["still:1|c"], to: relay.address)
        let received = try collect(from: [backend], expectedLines: 1)
        #expect(received.lines[0] == ["still:1|c"])
        _ = relay.stop()
    }
}
