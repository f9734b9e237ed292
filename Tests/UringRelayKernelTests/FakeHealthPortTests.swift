@testable import RelayKernel
import Glibc
import Testing

/// The health tests' stand-in port keeps its promise: a closed port refuses connects and no
/// other socket takes it, so a test that closes it sees its backends go down.
@Suite("The fake health port", .timeLimit(.minutes(1)), .onOwnThread)
struct FakeHealthPortTests {
    @Test(
        "closed, it refuses connects and another test's listener cannot take its port; reopened, it accepts on the same port",
        arguments: [false, true])
    func closeKeepsThePort(byNumber: Bool) throws {
        let health = try byNumber ? fakeHealthPortOnAFreePort() : FakeHealthPort()
        let address = SocketAddress(numericHost: "127.0.0.1", port: health.port)!
        _ = try TCPIngestClient(to: address)
        for _ in 0..<2 {
            health.close()
            #expect(throws: Errno(rawValue: ECONNREFUSED)) { _ = try TCPIngestClient(to: address) }
            // backendsWithHealthTwins binds this way, by number with SO_REUSEADDR.
            #expect(throws: Errno(rawValue: EADDRINUSE)) { Glibc.close(try listeningTCPSocket(port: health.port, reuseAddress: true).descriptor) }
            try health.reopen()
            _ = try TCPIngestClient(to: address)
        }
    }
}

/// A `FakeHealthPort` bound by the number of a port that was free a moment ago (bound with
/// port 0 and closed); another test may take it in between, so another is tried then.
private func fakeHealthPortOnAFreePort() throws -> FakeHealthPort {
    for _ in 0..<20 {
        let (fd, port) = try listeningTCPSocket()
        Glibc.close(fd)
        if let health = try HealthHarness.healthPort(on: port) { return health }
    }
    throw Errno(rawValue: EADDRINUSE)
}
