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
