import Glibc
import RelayKernel
import Testing
@testable import UringRelay

@Suite("Refusals reach the health monitor through the workers' counter boards (issue 12, defect 6)")
struct RefusalIntakeTests {
    static func counters(_ backends: [String], refused: [UInt64], retried: [UInt64]) -> RelayCounters {
        var counters = RelayCounters(backends: backends)
        for index in backends.indices {
            counters[.packetsRefused, backend: index] = refused[index]
            counters[.sendRetries, backend: index] = retried[index]
        }
        return counters
    }

    @Test("what grew since the last take, summed over workers, by identity; nothing twice")
    func takesWhatGrew() {
        let routing = RoutingState(addresses: [SocketAddress(numericHost: "127.0.0.1", port: 9001)!])
        let first = CounterBoard()
        let second = CounterBoard()
        routing.watchRefusals(on: first)
        routing.watchRefusals(on: second)
        routing.watchRefusals(on: first)  // a second watch of the same board changes nothing
        #expect(routing.takeRefusalsByBackend().isEmpty, "nothing published yet")

        first.publish(Self.counters(["a:1", "b:2"], refused: [3, 0], retried: [1, 0]))
        second.publish(Self.counters(["a:1", "b:2"], refused: [2, 0], retried: [0, 0]))
        #expect(routing.takeRefusalsByBackend() == ["a:1": 6])
        #expect(routing.takeRefusalsByBackend().isEmpty, "taken once")

        first.publish(Self.counters(["a:1", "b:2"], refused: [3, 5], retried: [1, 0]))
        #expect(routing.takeRefusalsByBackend() == ["b:2": 5])
    }

    @Test("a backend that left one worker's pool (retired counters) is still read by identity")
    func retiredBackendsAreRead() {
        let routing = RoutingState(addresses: [SocketAddress(numericHost: "127.0.0.1", port: 9001)!])
        let board = CounterBoard()
        routing.watchRefusals(on: board)
        var counters = Self.counters(["a:1", "gone:3"], refused: [0, 2], retried: [0, 0])
        board.publish(counters)
        #expect(routing.takeRefusalsByBackend() == ["gone:3": 2])
        counters.rekey(to: ["a:1"])
        counters.add(4, to: .packetsRefused, backend: "gone:3")  // a late refusal for the old socket
        board.publish(counters)
        #expect(routing.takeRefusalsByBackend() == ["gone:3": 4])
    }
}

@Suite("Relay core: a send failed by an earlier refusal is tried again once; a stop says what was never sent")
struct SendRetryCoreTests {
    /// A core with one backend that has packed `lines` lines into one packet per line.
    static func core(lines: Int) throws -> RelayCore {
        let settings = try RelayCoreTests.settings(["127.0.0.1:9001"])
        var core = try RelayCore(settings: settings, now: 0)
        core.beginTurn(now: 0)
        for index in 0..<lines {
            // A line the size of the packet limit goes alone: one packet per line.
            let line = "retry.\(index):" + String(repeating: "1", count: settings.packetBytes - 12) + "|c"
            core.receive(.datagram(length: line.utf8.count), Array(line.utf8).span.bytes, listener: 0, now: 0)
        }
        _ = core.endTurn(now: UInt64.max / 2, moreToReceive: false)
        return core
    }

    /// The next packet's slot and length, or `nil`.
    static func next(_ core: inout RelayCore) -> (slot: Int, length: Int32)? {
        guard let (slot, _) = core.nextOutgoing() else { return nil }
        return (slot, Int32(core.sendBuffers.length(of: slot)))
    }

    @Test("only the first ECONNREFUSED of a slot asks for a retry; a retried send is counted once in send_retries")
    func retryOnce() throws {
        var core = try Self.core(lines: 1)
        let next = Self.next(&core)
        let (slot, length) = try #require(next)
        let onItsOwn = core.retriesSend(slot: slot, result: -EPERM)
        let accepted = core.retriesSend(slot: slot, result: length)
        let refused = core.retriesSend(slot: slot, result: -ECONNREFUSED)
        let refusedAgain = core.retriesSend(slot: slot, result: -ECONNREFUSED)
        #expect(!onItsOwn, "a send failed on its own is not retried")
        #expect(!accepted)
        #expect(refused)
        #expect(!refusedAgain, "once only")
        let outcome = core.sendCompleted(slot: slot, result: length)
        let retries = core.counters[.sendRetries, backend: 0]
        #expect(outcome.isAccepted)
        #expect(retries == 1)
        #expect(outcome.fingerprint.length == Int(length), "the outcome carries the packet's fingerprint")
    }

    @Test("a retry done by the driver itself (sendmmsg) is counted too")
    func driverRetryCounted() throws {
        var core = try Self.core(lines: 2)
        let firstPacket = Self.next(&core)
        let secondPacket = Self.next(&core)
        let first = try #require(firstPacket)
        let second = try #require(secondPacket)
        _ = core.sendCompleted(slot: first.slot, result: first.length, retried: true)
        _ = core.sendCompleted(slot: second.slot, result: second.length)
        let retries = core.counters[.sendRetries, backend: 0]
        #expect(retries == 1)
    }

    @Test("at exit, lines never handed to the kernel and lines in sends with no completion are counted apart")
    func unsentAndInFlightAtExit() throws {
        var core = try Self.core(lines: 3)
        let handedOut = Self.next(&core)  // handed out, no completion
        let next = Self.next(&core)
        _ = try #require(handedOut)
        let completed = try #require(next)
        _ = core.sendCompleted(slot: completed.slot, result: completed.length)
        // The third packet is never handed out.
        let counters = core.finish(unrelayedDatagrams: 0, sendsInFlight: 1, now: 0)
        #expect(counters[.linesInFlightAtExit] == 1)
        #expect(counters[.linesDroppedUnsentAtExit] == 1)
        #expect(counters[.linesUnconfirmedAtExit] == 0 && counters[.linesDoubted] == 0)
    }
}
