@testable import RelayKernel
import Foundation
import Glibc
import Testing
@testable import UringRelay

/// A removed listener's drain is bounded (`WorkerListeners.removalDrainNanoseconds`). These
/// drive one worker's listener set directly, both drivers' way: the portable driver's (no
/// receive armed) and io_uring's (a multishot receive armed, cancelled before the close). The
/// listener set is shared by both drivers; no ring is needed to decide when a listener closes.
@Suite("A removed listener closes within its drain bound", .timeLimit(.minutes(1)), .onOwnThread)
struct ListenerDrainBoundTests {
    /// A core and the listener set of one worker listening on one loopback port.
    struct Worker: ~Copyable {
        var core: RelayCore
        var listeners: WorkerListeners
        let address: SocketAddress
    }

    static func worker() throws -> Worker {
        let backend = SocketAddress(numericHost: "127.0.0.1", port: 9)!
        var configuration = RelayConfiguration(backends: [try BackendAddress(parsing: backend.description)])
        configuration.threads = 1
        let settings = WorkerSettings(
            // A port below the ephemeral range: once released, no other test's socket is given it.
            configuration: configuration, listeners: [SocketAddress(numericHost: "127.0.0.1", port: try unusedPort())!],
            routing: RoutingState(addresses: [backend]),
            holdBudget: HoldBudget(totalBytes: 1 << 20, replayBytesPerSecond: 1 << 20, workers: 1))
        var core = try RelayCore(settings: settings, now: 0)
        let listeners = try WorkerListeners(settings: settings, core: &core)
        let address = listeners.boundAddresses[0]
        return Worker(core: core, listeners: listeners, address: address)
    }

    @Test("a removed listener still taking datagrams (its connect-to-self failed) closes at the bound, what it held counted as dropped, and its removal is answered", arguments: [false, true])
    func unrefusedListenerClosesAtBound(receiveArmed: Bool) throws {
        var worker = try Self.worker()
        let datagrams = (0..<25).map { "held.\($0):1|c" }
        try send(datagrams, to: worker.address)
        let receipt = CommandReceipt(workers: 1)
        let start: UInt64 = 1_000
        // What `startRemoval` leaves when connect(2) fails: draining, still taking datagrams.
        let draining = worker.listeners.beginDrain(id: 0, receipt: receipt, now: start)
        #expect(draining)
        if receiveArmed { worker.listeners[0].receiveArmed = true }

        // Within the bound it holds datagrams: it stays open, the removal unanswered.
        let closedWithin = worker.listeners.followRemovals(now: start, core: &worker.core, unrelayedListener: nil)
        #expect(!closedWithin)
        let openWithin = worker.listeners.count
        #expect(openWithin == 1)
        #expect(receipt.wait(timeoutNanoseconds: 0).unanswered == 1)

        let overdue = start + WorkerListeners.removalDrainNanoseconds
        if receiveArmed {
            // io_uring: past the bound its receive is cancelled first; it closes once that ended.
            let closedArmed = worker.listeners.followRemovals(now: overdue, core: &worker.core, unrelayedListener: nil)
            #expect(!closedArmed)
            let cancelAsked = worker.listeners[0].cancelWanted
            #expect(cancelAsked)
            worker.listeners[0].receiveArmed = false
        }
        let closedAtBound = worker.listeners.followRemovals(now: overdue, core: &worker.core, unrelayedListener: nil)
        #expect(closedAtBound)
        let allClosed = worker.listeners.isEmpty
        #expect(allClosed)
        #expect(receipt.wait(timeoutNanoseconds: 0) == CommandReceipt.Outcome(applied: 1, refused: 0, unanswered: 0))
        let droppedAtClose = worker.core.counters[.datagramsDroppedAtExit]
        #expect(droppedAtClose == UInt64(datagrams.count))
        let uncounted = worker.core.counters[.listenersClosedUncounted]
        #expect(uncounted == 0)
        #expect((try? UDPSocket.bound(to: worker.address)) != nil, "the removed listener still holds \(worker.address)")
    }

    @Test("a removed listener connected to itself and read empty closes at once, nothing counted as dropped")
    func refusedEmptyListenerClosesAtOnce() throws {
        var worker = try Self.worker()
        let receipt = CommandReceipt(workers: 1)
        let removing = worker.listeners.startRemoval(id: 0, receipt: receipt, now: 1_000)
        #expect(removing)
        // A client still sending to it is refused by the kernel, not queued.
        try send(["late:1|c"], to: worker.address)
        let closed = worker.listeners.followRemovals(now: 1_000, core: &worker.core, unrelayedListener: nil)
        #expect(closed)
        let allClosed = worker.listeners.isEmpty
        #expect(allClosed)
        #expect(receipt.wait(timeoutNanoseconds: 0).applied == 1)
        let dropped = worker.core.counters[.datagramsDroppedAtExit]
        #expect(dropped == 0)
    }

    @Test("a removed listener whose datagrams still wait unrelayed in the driver stays open until they are relayed")
    func unrelayedDatagramsKeepListenerOpen() throws {
        var worker = try Self.worker()
        let removing = worker.listeners.startRemoval(id: 0, receipt: nil, now: 1_000)
        #expect(removing)
        let closedEarly = worker.listeners.followRemovals(now: 1_000, core: &worker.core, unrelayedListener: 0)
        #expect(!closedEarly)
        let stillOpen = worker.listeners.count
        #expect(stillOpen == 1)
        let closed = worker.listeners.followRemovals(now: 1_000, core: &worker.core, unrelayedListener: nil)
        #expect(closed)
        let allClosed = worker.listeners.isEmpty
        #expect(allClosed)
    }
}
