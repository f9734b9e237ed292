import Foundation
import Glibc
import Testing
@testable import UringRelay

@Suite("Kernel drops at the listening socket are counted", .serialized, .timeLimit(.minutes(1)), .onOwnThread)
struct KernelDropTests {
    @Test("a stopped relay's full socket drops datagrams: datagrams_dropped.kernel counts every one the relay never saw", arguments: ioDrivers)
    func stoppedRelayCountsKernelDrops(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let relay = try RelayProcess(driver: driver, [
            "--bind", "127.0.0.1", "--port", "0", "--threads", "1", "--rcvbuf", "16K", backend.spec,
        ])
        let address = try relay.listenAddress()
        try #require(relay.suspend(), "the relay did not stop")
        // A stopped worker takes nothing: a 16 KiB socket buffer holds a few dozen of these.
        let sent = (0..<2_000).map { "stalled.\($0):1|c" }
        try send(sent, to: address)
        relay.signal(SIGCONT)
        relay.signal(SIGTERM)
        #expect(relay.waitForExit() == 0)
        let received = try #require(relay.counter("statsrelay.datagrams_received"))
        let dropped = try #require(relay.counter("statsrelay.datagrams_dropped.kernel"))
        #expect(dropped > 0)
        #expect(received + dropped == UInt64(sent.count), "received \(received) + dropped \(dropped)")
        let arrived = try collect(from: [backend], expectedLines: Int(received), seconds: 5)
        #expect(UInt64(arrived.totalLines) == received)
    }
}
