@testable import RelayKernel
import Foundation
import Glibc
import Testing
@testable import UringRelay

/// Kernel drops of the sockets both relays read during a takeover are counted once: the old
/// relay counts up to the counter's value at its offer (sent with the sockets, protocol
/// version 2), the new relay from there.
@Suite("Kernel drops across a takeover: counted once", .serialized, .timeLimit(.minutes(1)), .onOwnThread)
struct TakeoverDropTests {
    /// A one-worker relay with a 16 KiB socket buffer and a control socket; a successor played
    /// by the test takes the offer, then the relay is stopped (SIGSTOP) while 2 000 datagrams
    /// overflow its socket. Returns the relay, the test's end of the takeover, the counter the
    /// offer named, and the socket's drop counter after the overflow.
    struct Overflow: ~Copyable {
        let relay: RelayProcess
        let held: TakeoverTests.HeldOffer
        let offered: UInt32
        let after: UInt32
    }

    func overflowAfterOffer(driver: IOBackendChoice, backend: TestBackend, control: TakeoverTests.ControlPath) throws -> Overflow {
        let relay = try RelayProcess(driver: driver, [
            "--bind", "127.0.0.1", "--port", "0", "--rcvbuf", "16K", "--control-socket", control.path,
        ] + TakeoverTests.oneWorker + [backend.spec])
        let address = try relay.listenAddress()
        try #require(relay.waitForLog("control socket on \(control.path)"), "\(relay.standardError)")
        let held = try TakeoverTests.takeOffer(control: control, address: address, relay: relay, version: 2)
        guard case .sockets(0, address.description, let drops?)? = held.message, drops.count == 1,
              let offered = drops[0], let passed = held.sockets.first else {
            Issue.record("sockets frame \(String(decoding: held.payload, as: UTF8.self)) with \(held.sockets.count) sockets")
            throw Errno(rawValue: EPROTO)
        }
        try #require(relay.suspend(), "the relay did not stop")
        try send((0..<2_000).map { "overflow.\($0):1|c" }, to: address)
        let reading = passed.socket.kernelDrops
        let after = try #require(reading)
        #expect(after &- offered > 0, "the overflow dropped nothing")
        return Overflow(relay: relay, held: held, offered: offered, after: after)
    }

    @Test("handed over: the old relay counts none of the drops after its offer (the new relay's)", arguments: ioDrivers)
    func handedOver(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let control = TakeoverTests.ControlPath()
        let run = try overflowAfterOffer(driver: driver, backend: backend, control: control)
        try run.held.connection.sendFrame(TakeoverMessage.ready.encoded, timeoutMilliseconds: 2_000)
        run.relay.signal(SIGCONT)
        #expect(run.relay.waitForExit() == 0, "\(run.relay.standardError)")
        #expect(run.relay.counter("statsrelay.datagrams_dropped.kernel") == 0, "\(run.relay.standardError)")
        let received = try #require(run.relay.counter("statsrelay.datagrams_received"))
        #expect(received + UInt64(run.after &- run.offered) == 2_000)
        #expect(run.relay.standardError.contains("io_backend=\(driver.rawValue)"))
    }

    @Test("the takeover fails: the old relay counts every drop again, those after its offer included", arguments: ioDrivers)
    func takeoverFails(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let control = TakeoverTests.ControlPath()
        let run = try overflowAfterOffer(driver: driver, backend: backend, control: control)
        try run.held.connection.sendFrame(TakeoverMessage.failed(reason: "test").encoded, timeoutMilliseconds: 2_000)
        run.relay.signal(SIGCONT)
        #expect(run.relay.waitForLog("takeover failed in the new relay; this one keeps running"), "\(run.relay.standardError)")
        run.relay.signal(SIGTERM)
        #expect(run.relay.waitForExit() == 0, "\(run.relay.standardError)")
        let dropped = try #require(run.relay.counter("statsrelay.datagrams_dropped.kernel"))
        #expect(dropped == UInt64(run.after &- run.offered) && run.offered == 0)
        let received = try #require(run.relay.counter("statsrelay.datagrams_received"))
        #expect(received + dropped == 2_000)
        #expect(run.relay.standardError.contains("io_backend=\(driver.rawValue)"))
    }

    @Test("a successor speaking version 1 gets the version 1 offer: sockets without drop counters", arguments: ioDrivers)
    func version1Successor(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let control = TakeoverTests.ControlPath()
        let relay = try RelayProcess(driver: driver, [
            "--bind", "127.0.0.1", "--port", "0", "--control-socket", control.path,
        ] + TakeoverTests.oneWorker + [backend.spec])
        let address = try relay.listenAddress()
        try #require(relay.waitForLog("control socket on \(control.path)"), "\(relay.standardError)")
        do {
            let held = try TakeoverTests.takeOffer(control: control, address: address, relay: relay, version: 1)
            #expect(String(decoding: held.payload, as: UTF8.self) == "sockets index=0 address=\(address)")
        }
        #expect(relay.waitForLog("takeover failed in the new relay; this one keeps running"), "\(relay.standardError)")
        relay.signal(SIGTERM)
        #expect(relay.waitForExit() == 0, "\(relay.standardError)")
    }
}
