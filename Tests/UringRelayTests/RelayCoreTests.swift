import RelayKernel
import Testing
@testable import UringRelay

@Suite("Relay core: pool changes at turn boundaries")
struct RelayCoreTests {
    static func settings(_ specs: [String]) throws -> WorkerSettings {
        let backends = try specs.map { try BackendAddress(parsing: $0) }
        let addresses = backends.map { SocketAddress(numericHost: $0.host, port: $0.port)! }
        let configuration = RelayConfiguration(backends: backends)
        let routing = RoutingState(pool: BackendPool(backends: backends, addresses: addresses, policy: .rehash))
        let budget = HoldBudget(totalBytes: 1 << 20, replayBytesPerSecond: 1 << 20, workers: 1)
        return WorkerSettings(
            configuration: configuration, listeners: [SocketAddress(numericHost: "127.0.0.1", port: 0)!], routing: routing,
            holdBudget: budget)
    }

    @Test("a membership change waits for the old pool's batches, then switches; counters follow identities")
    func changeAfterBatchesAreSent() throws {
        let settings = try Self.settings(["127.0.0.1:9001", "127.0.0.1:9002"])
        var core = try RelayCore(settings: settings, now: 0)
        core.beginTurn(now: 0)
        core.receive(.datagram(length: 11), Array("kept:1|c\nx:1".utf8).span.bytes, listener: 0, now: 0)
        settings.routing.replaceBackends(
            [try BackendAddress(parsing: "127.0.0.1:9002"), try BackendAddress(parsing: "127.0.0.1:9003")],
            addresses: [SocketAddress(numericHost: "127.0.0.1", port: 9002)!, SocketAddress(numericHost: "127.0.0.1", port: 9003)!])
        core.beginTurn(now: 1)
        let pending = core.pendingPool != nil
        let accepting = core.canAcceptDatagram
        #expect(pending)
        #expect(!accepting, "no datagram is routed while the old pool's batches are out")
        var sent: [SendOutcome] = []
        while let (slot, _) = core.nextOutgoing() {
            sent.append(core.sendCompleted(slot: slot, result: Int32(core.sendBuffers.length(of: slot))))
        }
        #expect(sent.map(\.lines).reduce(0, +) == 2, "the batches open at the change went out by the old pool")
        let ready = core.poolChangeReady(sendsInFlight: 0)
        #expect(ready)
        try core.completePoolChange(now: 0)
        let identities = core.pool.identities
        let acceptingAfter = core.canAcceptDatagram
        let changes = core.counters[.poolChanges]
        #expect(identities == ["127.0.0.1:9002", "127.0.0.1:9003"])
        #expect(acceptingAfter)
        #expect(changes == 1)
    }

    @Test("each listener's received datagrams, bytes and lines are its own, however its datagrams interleave and whenever the counters are read")
    func listenerSharesOfReceivedTotals() throws {
        let settings = try Self.settings(["127.0.0.1:9001"])
        var core = try RelayCore(settings: settings, now: 0)
        core.nameListener(id: 0, label: "udp:127.0.0.1:8125")
        core.nameListener(id: 1, label: "udp:127.0.0.1:8126")
        core.beginTurn(now: 0)
        func receive(_ text: String, listener: UInt32) {
            let bytes = Array(text.utf8)
            core.receive(.datagram(length: bytes.count), bytes.span.bytes, listener: listener, now: 0)
        }
        receive("a:1|c", listener: 0)
        receive("b:1|c\nc:1|c", listener: 0)
        receive("d:1|c", listener: 1)
        // Listener 7 was never named: counted in the totals only.
        receive("e:1|c\nf:1|c\ng:1|c", listener: 7)
        let midway = core.counters
        #expect(midway[.datagramsReceived, listener: "udp:127.0.0.1:8125"] == 2)
        #expect(midway[.bytesReceived, listener: "udp:127.0.0.1:8125"] == 16)
        #expect(midway[.linesReceived, listener: "udp:127.0.0.1:8125"] == 3)
        #expect(midway[.linesReceived, listener: "udp:127.0.0.1:8126"] == 1)
        receive("h:1|c", listener: 1)
        receive("i:1|c\nj:1|c", listener: 0)
        // Named while its datagrams are being received: what came before is still its own.
        core.nameListener(id: 0, label: "udp:127.0.0.1:8125")
        receive("k:1|c", listener: 0)
        _ = core.endTurn(now: CounterBoard.publishIntervalNanoseconds, moreToReceive: false)
        let published = try #require(settings.board.counters)
        receive("l:1|c", listener: 1)
        let final = core.finish(unrelayedDatagrams: 0, sendsInFlight: 0, now: CounterBoard.publishIntervalNanoseconds)
        #expect(published[.datagramsReceived, listener: "udp:127.0.0.1:8125"] == 4)
        #expect(published[.linesReceived, listener: "udp:127.0.0.1:8125"] == 6)
        #expect(published[.linesReceived, listener: "udp:127.0.0.1:8126"] == 2)
        #expect(final[.datagramsReceived] == 8)
        #expect(final[.linesReceived] == 12)
        #expect(final[.datagramsReceived, listener: "udp:127.0.0.1:8125"] == 4)
        #expect(final[.bytesReceived, listener: "udp:127.0.0.1:8125"] == 16 + 11 + 5)
        #expect(final[.datagramsReceived, listener: "udp:127.0.0.1:8126"] == 3)
        #expect(final[.bytesReceived, listener: "udp:127.0.0.1:8126"] == 15)
        #expect(final[.linesReceived, listener: "udp:127.0.0.1:8126"] == 3)
        #expect(core.counters == final)
    }

    @Test("a pool change that could not be applied is tried again a second later, not forgotten")
    func failedChangeIsRetried() throws {
        let settings = try Self.settings(["127.0.0.1:9001"])
        var core = try RelayCore(settings: settings, now: 0)
        settings.routing.replaceBackends(
            [try BackendAddress(parsing: "127.0.0.1:9004")], addresses: [SocketAddress(numericHost: "127.0.0.1", port: 9004)!])
        let start = MonotonicClock.nanoseconds()
        core.beginTurn(now: start)
        let pendingFirst = core.pendingPool != nil
        #expect(pendingFirst)
        core.abandonPoolChange(now: start)  // as a driver does when the new sockets cannot be opened
        let failed = core.counters[.poolChangesFailed]
        #expect(failed == 1)
        core.beginTurn(now: start)
        let pendingAtOnce = core.pendingPool != nil
        #expect(!pendingAtOnce, "not retried at once")
        core.beginTurn(now: start + 2 * RelayCore.poolChangeRetryNanoseconds)
        let retried = core.pendingPool?.identities
        #expect(retried == ["127.0.0.1:9004"], "tried again after the retry interval")
    }
}
