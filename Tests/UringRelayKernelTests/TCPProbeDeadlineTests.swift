@testable import RelayKernel
import Dispatch
import Glibc
import Testing
@testable import UringRelay

/// The probe round's deadline and its cancellation: a probe that has its answer is never
/// failed for time, however late the round looks (a monitor thread that was not scheduled for
/// a while), and a stop ends a round at once.
@Suite("TCP probe rounds: deadline after poll, cancellation", .timeLimit(.minutes(1)), .onOwnThread)
struct TCPProbeDeadlineTests {
    @Test("a round whose deadline has passed before its first poll still takes what is ready: a loopback connect completes")
    func lateRoundTakesReadyProbes() throws {
        let (listener, port) = try listeningTCPSocket(backlog: 128)
        defer { close(listener) }
        let target = TCPProbe.Target(address: SocketAddress(numericHost: "127.0.0.1", port: port)!)
        // A zero timeout puts the deadline behind the first poll, as a monitor preempted
        // between connecting and polling finds it. A loopback connect is complete by then.
        for _ in 0..<50 {
            #expect(TCPProbe.run([target], timeoutMilliseconds: 0) == [nil])
            // Keep the backlog from filling: take the connection the probe made.
            let connection = accept(listener, nil, nil)
            if connection >= 0 { close(connection) }
        }
    }

    /// A statsd-admin probe of a port that accepts connections (the kernel completes them in
    /// its backlog) and never answers: the listener is never `accept`ed.
    static func silentTarget() throws -> (probe: TCPProbe.Target, listener: Int32) {
        let (listener, port) = try listeningTCPSocket()
        let probe = TCPProbe.Target(
            address: SocketAddress(numericHost: "127.0.0.1", port: port)!, request: Array("health\n".utf8),
            expect: Array("health: up".utf8))
        return (probe, listener)
    }

    @Test("a probe with nothing ready past the deadline times out, with the timeout in the reason")
    func silentProbeTimesOut() throws {
        let target = try Self.silentTarget()
        defer { close(target.listener) }
        #expect(TCPProbe.run([target.probe], timeoutMilliseconds: 50) == ["timed out after 50ms"])
    }

    @Test("a signalled stop ends a round that would otherwise wait for its timeout")
    func cancelled() throws {
        let target = try Self.silentTarget()
        defer { close(target.listener) }
        let stop = try WakeupEvent()
        stop.signal()
        // Sixty seconds: only the cancellation can end this round within the suite's time limit.
        #expect(TCPProbe.run([target.probe], timeoutMilliseconds: 60_000, cancel: stop) == [TCPProbe.cancelledOutcome])
    }
}
