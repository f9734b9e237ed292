@testable import RelayKernel
import Foundation
import Glibc
import Testing
@testable import UringRelay

@Suite("Stop delay (--stop-delay)", .serialized, .timeLimit(.minutes(1)), .onOwnThread)
struct StopDelayTests {
    /// A child relay on one loopback backend with its admin endpoint on a kernel-chosen port.
    static func launch(driver: IOBackendChoice, backend: TestBackend, delay: String) throws -> (RelayProcess, SocketAddress, AdminAddress) {
        let relay = try RelayProcess(driver: driver, [
            "--admin", "127.0.0.1:0", "--bind", "127.0.0.1", "--port", "0", "--threads", "1", "--stop-delay", delay, backend.spec,
        ])
        let listen = try relay.listenAddress()
        let admin = try adminAddress(of: relay)
        return (relay, listen, admin)
    }

    @Test("after SIGTERM, /healthz is 503 stopping at once while lines still arrive; then the relay drains and exits 0",
          arguments: ioDrivers)
    func healthzDownWhileRelaying(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let (relay, listen, admin) = try Self.launch(driver: driver, backend: backend, delay: "4s")
        #expect(try AdminClient.get("/healthz", from: admin).status == 200)

        relay.signal(SIGTERM)
        #expect(relay.waitForLog("out of service"), "no stop-delay line: \(relay.standardError)")
        let stopping = try AdminClient.get("/healthz", from: admin)
        #expect(stopping == AdminClient.Response(
            status: 503, body: "stopping: out of service for --stop-delay, still relaying until the drain\n"))

        let lines = (0..<200).map { "during.delay.\($0):1|c" }
        try send(lines, to: listen)
        let received = try collect(from: [backend], expectedLines: lines.count, seconds: 3)
        // Still in the delay: the drain has not begun, and the health check still says stopping.
        let drained = relay.standardError.contains("stopping: draining")
        let stillDown = try AdminClient.get("/healthz", from: admin).status
        #expect(received.lines[0].sorted() == lines.sorted())
        #expect(!drained, "the drain began before the lines arrived: \(relay.standardError)")
        #expect(stillDown == 503)

        #expect(relay.waitForExit(seconds: 15) == 0)
        let log = relay.standardError
        let outOfService = try #require(log.range(of: "out of service"))
        let draining = try #require(log.range(of: "stopping: draining"))
        #expect(outOfService.lowerBound < draining.lowerBound)
        #expect(relay.counter("statsrelay.lines_forwarded") == UInt64(lines.count))
    }

    /// Under a 60 s delay, the second stop signal must end it (the process is given 15 s).
    @Test("a second SIGTERM or a SIGINT during the delay stops the relay at once", arguments: ioDrivers, [SIGTERM, SIGINT])
    func secondSignalEndsDelay(driver: IOBackendChoice, second: Int32) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let (relay, _, _) = try Self.launch(driver: driver, backend: backend, delay: "60s")
        relay.signal(SIGTERM)
        #expect(relay.waitForLog("out of service"))
        relay.signal(second)
        #expect(relay.waitForExit(seconds: 15) == 0, "still running 15 s into a 60 s delay: \(relay.standardError)")
        #expect(relay.standardError.contains("stop delay cut short: stopping now"))
    }

    @Test("SIGINT first has no delay: Ctrl-C stops at once", arguments: ioDrivers)
    func interruptHasNoDelay(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let (relay, _, _) = try Self.launch(driver: driver, backend: backend, delay: "60s")
        relay.signal(SIGINT)
        #expect(relay.waitForExit(seconds: 15) == 0, "still running 15 s into a 60 s delay: \(relay.standardError)")
        #expect(!relay.standardError.contains("out of service"))
    }
}
