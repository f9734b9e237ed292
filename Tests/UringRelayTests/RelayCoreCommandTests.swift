import RelayKernel
import Testing
@testable import UringRelay

/// The commands of a worker's control channel as the core applies them: in order, at a turn
/// boundary, a new packet length without a line lost, split or sent twice.
@Suite("Relay core: control commands")
struct RelayCoreCommandTests {
    /// Hands out every ready packet and completes its send as the kernel would (every byte
    /// taken), returning each packet's text.
    static func sendAll(_ core: inout RelayCore) -> [String] {
        var packets: [String] = []
        while let (slot, _) = core.nextOutgoing() {
            let text = core.sendBuffers.withBytes(ofSlot: slot) { bytes in
                bytes.withUnsafeBytes { String(decoding: $0, as: UTF8.self) }
            }
            packets.append(text)
            _ = core.sendCompleted(slot: slot, result: Int32(core.sendBuffers.length(of: slot)))
        }
        return packets
    }

    /// Relays one datagram of `lines` joined by newlines.
    static func receive(_ lines: [String], into core: inout RelayCore, now: UInt64) {
        let bytes = Array(lines.joined(separator: "\n").utf8)
        core.receive(.datagram(length: bytes.count), bytes.span.bytes, listener: 0, now: now)
    }

    @Test("a new packet length closes the open batch at the old length, takes no datagram until it is sent, then packs at the new one; no line lost, split or sent twice, and no pool change counted")
    func packetLengthChange() throws {
        let settings = try RelayCoreTests.settings(["127.0.0.1:9001"])
        var core = try RelayCore(settings: settings, now: 0)
        core.beginTurn(now: 0)
        // 6 lines of 13 bytes with their newlines: one 78-byte batch under the default 1400.
        let before = (0..<6).map { "before.\($0):1|c" }
        Self.receive(before, into: &core, now: 0)
        core.apply(.applySettings(packetBytes: 40, flushIntervalNanoseconds: 1_000_000_000), now: 1)
        let accepting = core.canAcceptDatagram
        #expect(!accepting, "a datagram taken now would be packed for buffers about to go")
        let old = Self.sendAll(&core)
        #expect(old == [before.map { "\($0)\n" }.joined()], "the open batch went out whole, at the old length")
        let ready = core.poolChangeReady(sendsInFlight: 0)
        #expect(ready)
        try core.completePoolChange(now: 0)
        let packetBytes = core.packetBytes
        let acceptingAfter = core.canAcceptDatagram
        #expect(packetBytes == 40)
        #expect(acceptingAfter)
        let after = (0..<6).map { "after.\($0):1|c" }
        Self.receive(after, into: &core, now: 2)
        _ = core.endTurn(now: 2 + 1_000_000_000, moreToReceive: false)
        let new = Self.sendAll(&core)
        #expect(new.allSatisfy { $0.utf8.count <= 40 }, "\(new)")
        #expect(new.joined() == after.map { "\($0)\n" }.joined(), "every line once, in order, whole")
        let changes = core.counters[.poolChanges]
        #expect(changes == 0)
    }

    @Test("a packet length whose smaller send buffers could not carry the packets held for a down backend waits until they are replayed; relaying goes on meanwhile")
    func packetLengthWaitsForHeldPackets() throws {
        let backends = [try BackendAddress(parsing: "127.0.0.1:9001")]
        var configuration = RelayConfiguration(backends: backends)
        configuration.packetBytes = 1000
        configuration.maxDatagramBytes = 100
        let routing = RoutingState(pool: BackendPool(
            backends: backends, addresses: [SocketAddress(numericHost: "127.0.0.1", port: 9001)!], policy: .hold))
        let settings = WorkerSettings(
            configuration: configuration, listeners: [SocketAddress(numericHost: "127.0.0.1", port: 0)!], routing: routing,
            holdBudget: HoldBudget(totalBytes: 1 << 20, replayBytesPerSecond: 1 << 30, workers: 1))
        var core = try RelayCore(settings: settings, now: 0)
        routing.publish(down: [true], addresses: [SocketAddress(numericHost: "127.0.0.1", port: 9001)!])
        core.beginTurn(now: 0)
        // 60 lines of 14-15 bytes: about 900 bytes, one packet at 1000, held (the backend is down).
        let lines = (0..<60).map { "held.\($0):1|c" }
        for chunk in stride(from: 0, to: lines.count, by: 6) {
            Self.receive(Array(lines[chunk..<chunk + 6]), into: &core, now: 0)
        }
        _ = core.endTurn(now: 1_000_000_000, moreToReceive: false)
        #expect(Self.sendAll(&core).isEmpty, "held, not sent")
        core.apply(.applySettings(packetBytes: 200, flushIntervalNanoseconds: 10_000_000), now: 1_000_000_000)
        let waiting = (core.packetBytes, core.pendingPool == nil, core.canAcceptDatagram)
        #expect(waiting == (1000, true, true), "the change waits, and datagrams are still taken")

        routing.publish(down: [false], addresses: [SocketAddress(numericHost: "127.0.0.1", port: 9001)!])
        core.beginTurn(now: 2_000_000_000)
        _ = core.endTurn(now: 2_000_000_000, moreToReceive: false)
        let replayed = Self.sendAll(&core)
        #expect(replayed.joined() == lines.map { "\($0)\n" }.joined(), "the held packet went out whole")
        core.beginTurn(now: 3_000_000_000)
        let ready = core.poolChangeReady(sendsInFlight: 0)
        #expect(ready, "with nothing held, the new length is taken")
        try core.completePoolChange(now: 3_000_000_000)
        let packetBytes = core.packetBytes
        #expect(packetBytes == 200)
    }

    @Test("commands apply in the order sent: of two settings the later holds")
    func inOrder() throws {
        let settings = try RelayCoreTests.settings(["127.0.0.1:9001"])
        var core = try RelayCore(settings: settings, now: 0)
        core.apply(.applySettings(packetBytes: 300, flushIntervalNanoseconds: 7_000_000), now: 0)
        core.apply(.applySettings(packetBytes: 200, flushIntervalNanoseconds: 3_000_000), now: 0)
        let interval = core.flushIntervalNanoseconds
        #expect(interval == 3_000_000)
        try core.completePoolChange(now: 0)
        let packetBytes = core.packetBytes
        #expect(packetBytes == 200)
    }

    @Test("a stop command starts the stop at the next turn's end")
    func stop() throws {
        let settings = try RelayCoreTests.settings(["127.0.0.1:9001"])
        var core = try RelayCore(settings: settings, now: 0)
        core.apply(.stop, now: 5)
        _ = core.endTurn(now: 5, moreToReceive: true)
        let phase = core.phase
        #expect(phase == .draining)
    }
}
