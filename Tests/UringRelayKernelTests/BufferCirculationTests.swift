import Foundation
import Glibc
@testable import RelayKernel
import Testing
@testable import UringRelay

/// Buffers kept out of circulation (`ProvidedBufferRing.publish(circulating:)`), on a real ring
/// with a multishot `recv` on loopback: the kernel fills only the buffers that circulate, the
/// reserve shrinks circulation as buffers come back and grows it at once, and every buffer id
/// stays exactly one of with the kernel, held, unpublished or reserved.
@Suite("Provided buffers in circulation", .serialized, .timeLimit(.minutes(1)), .onOwnThread)
struct BufferCirculationTests {
    /// The receive's `user_data`.
    static let receive = UserData(.receive, index: 3)

    /// A ring of `count` buffers, a multishot `recv` armed on a loopback socket, and the ids the
    /// test holds; the ring closes before the buffers go, on every path.
    static func withReceiver(
        count: Int, _ body: (borrowing Ring, inout ProvidedBufferRing, borrowing UDPSocket, borrowing UDPSocket) throws -> Void
    ) throws {
        try requireDriver(.uring)
        let socket = try UDPSocket.bound(to: SocketAddress(numericHost: "127.0.0.1", port: 0)!, receiveBufferBytes: 1 << 20)
        let sender = try UDPSocket.bound(to: SocketAddress(numericHost: "127.0.0.1", port: 0)!)
        let ring = try Ring(entries: 8, completionEntries: 64)
        var buffers = try ProvidedBufferRing(ring: ring, groupID: 0, count: count, payloadBytes: 64)
        var failure: (any Error)?
        do { try body(ring, &buffers, socket, sender) } catch { failure = error }
        ring.close()
        let consistent = buffers.verifyInvariants()
        #expect(consistent)
        if let failure { throw failure }
    }

    /// What one burst produced: the buffers filled, in order, and how the receive ended
    /// (`nil`: it stays armed).
    struct Burst {
        var bufferIDs: [UInt16] = []
        var endResult: Int32?

        /// Whether the receive ended as the kernel ends it once the group has no buffer left:
        /// `-ENOBUFS`. Linux 6.18 does so as soon as the last buffer is filled, before another
        /// datagram comes (the multishot receive picks its next buffer before it reads);
        /// `mayStayArmed` also takes a receive that stays armed until one does.
        func endedForLackOfBuffers(mayStayArmed: Bool) -> Bool {
            endResult == -ENOBUFS || (mayStayArmed && endResult == nil)
        }
    }

    /// Arms the receive unless it is (`armed`), sends `datagrams` (each distinct) and takes
    /// completions until `expected` buffers were filled or the receive ended, holding each
    /// buffer (`take`).
    static func burst(
        _ datagrams: Int, expecting expected: Int, ring: borrowing Ring, buffers: inout ProvidedBufferRing, armed: inout Bool,
        from sender: borrowing UDPSocket, to socket: borrowing UDPSocket
    ) throws -> Burst {
        if !armed {
            try ring.armMultishotReceive(on: socket, buffers: buffers, userData: receive)
            armed = true
        }
        for index in 0..<datagrams { try sender.send(Array("circulation.\(index):1|c".utf8), to: socket.localAddress) }
        var burst = Burst()
        let deadline = MonotonicClock.nanoseconds() + 5_000_000_000
        while burst.bufferIDs.count < expected && burst.endResult == nil && MonotonicClock.nanoseconds() < deadline {
            try ring.submitAndWait(completions: 1, timeoutNanoseconds: 100_000_000, minimumWaitMicroseconds: 0)
            while let completion = ring.nextCompletion() {
                #expect(completion.userData == receive)
                if let bufferID = completion.bufferID {
                    buffers.take(bufferID)
                    burst.bufferIDs.append(bufferID)
                }
                if !completion.hasMore {
                    burst.endResult = completion.result
                    armed = false
                }
            }
        }
        return burst
    }

    /// Checks that the ids held, reserved and unpublished are distinct and that `available`
    /// counts the rest: every id is exactly one of with the kernel, held, unpublished, reserved.
    static func expectAccounted(
        _ buffers: borrowing ProvidedBufferRing, held: [UInt16], sourceLocation: SourceLocation = #_sourceLocation
    ) {
        let accounted = held + buffers.reservedBufferIDs + buffers.unpublishedBufferIDs
        #expect(Set(accounted).count == accounted.count, "an id counted twice: \(accounted)", sourceLocation: sourceLocation)
        #expect(accounted.allSatisfy { Int($0) < buffers.count }, sourceLocation: sourceLocation)
        #expect(buffers.held == held.count, sourceLocation: sourceLocation)
        #expect(buffers.available == buffers.count - accounted.count, sourceLocation: sourceLocation)
        let consistent = buffers.verifyInvariants()
        #expect(consistent, sourceLocation: sourceLocation)
    }

    @Test("8 buffers circulating 4: a burst fills 4 distinct buffers and the receive ends (ENOBUFS); grown back to 8, all 8 are filled")
    func shrinkThenGrow() throws {
        try Self.withReceiver(count: 8) { ring, buffers, socket, sender in
            // Nothing came back yet: nothing can be withheld, all 8 still circulate.
            buffers.publish(circulating: 4)
            #expect(buffers.circulating == 8 && buffers.reserved == 0 && buffers.available == 8)
            var armed = false

            // One datagram per buffer: all 8 filled.
            var held = try Self.burst(8, expecting: 8, ring: ring, buffers: &buffers, armed: &armed, from: sender, to: socket)
            #expect(Set(held.bufferIDs) == Set(0..<8), "\(held.bufferIDs)")
            #expect(held.endedForLackOfBuffers(mayStayArmed: true), "\(String(describing: held.endResult))")
            #expect(buffers.available == 0)
            Self.expectAccounted(buffers, held: held.bufferIDs)

            // Back together: the last 4 recycled are withheld, the first 4 published.
            for id in held.bufferIDs { buffers.recycle(id) }
            buffers.publish(circulating: 4)
            #expect(buffers.circulating == 4 && buffers.reserved == 4 && buffers.available == 4)
            #expect(Set(buffers.reservedBufferIDs) == Set(held.bufferIDs.suffix(4)))
            Self.expectAccounted(buffers, held: [])
            let reserved = Set(buffers.reservedBufferIDs)

            // A burst of 8: 4 buffers, then no buffer for the fifth datagram ends the receive.
            let fourOnly = try Self.burst(8, expecting: 5, ring: ring, buffers: &buffers, armed: &armed, from: sender, to: socket)
            #expect(fourOnly.bufferIDs.count == 4, "\(fourOnly.bufferIDs)")
            #expect(Set(fourOnly.bufferIDs).count == fourOnly.bufferIDs.count)
            #expect(reserved.isDisjoint(with: fourOnly.bufferIDs), "a reserved buffer was filled: \(fourOnly.bufferIDs)")
            #expect(fourOnly.endedForLackOfBuffers(mayStayArmed: false), "\(String(describing: fourOnly.endResult))")
            #expect(buffers.available == 0)
            Self.expectAccounted(buffers, held: fourOnly.bufferIDs)

            // Grown back at once, with 4 still held: the reserved 4 are published.
            buffers.publish(circulating: 8)
            #expect(buffers.circulating == 8 && buffers.reserved == 0 && buffers.available == 4)
            Self.expectAccounted(buffers, held: fourOnly.bufferIDs)
            for id in fourOnly.bufferIDs { buffers.recycle(id) }
            buffers.publish(circulating: 8)
            #expect(buffers.available == 8)
            Self.expectAccounted(buffers, held: [])

            // Re-armed: the 4 datagrams left in the socket and 4 more fill all 8 buffers.
            #expect(!armed)
            held = try Self.burst(4, expecting: 8, ring: ring, buffers: &buffers, armed: &armed, from: sender, to: socket)
            #expect(Set(held.bufferIDs) == Set(0..<8), "\(held.bufferIDs)")
            #expect(held.endedForLackOfBuffers(mayStayArmed: true), "\(String(describing: held.endResult))")
            Self.expectAccounted(buffers, held: held.bufferIDs)
            for id in held.bufferIDs { buffers.recycle(id) }
            buffers.publish()
            Self.expectAccounted(buffers, held: [])
        }
    }

    /// One step of a circulation scenario.
    enum Step: Sendable, CustomStringConvertible {
        /// Sends `n` datagrams and holds the `n` buffers filled (at most `available`), arming
        /// the receive again if it ended.
        case receive(Int)
        /// Recycles the `n` buffers held longest.
        case recycle(Int)
        /// `publish(circulating: wanted)`, after which `circulating` buffers circulate.
        case publish(wanted: Int, circulating: Int)

        var description: String {
            switch self {
            case .receive(let count): "receive \(count)"
            case .recycle(let count): "recycle \(count)"
            case .publish(let wanted, let circulating): "publish(circulating: \(wanted)) → \(circulating)"
            }
        }
    }

    /// Scenarios on 8 buffers: circulation shrinks only by the buffers recycled since the last
    /// publish, grows at once, and goes down to one and back.
    static let scenarios: [[Step]] = [
        [.receive(8), .recycle(8), .publish(wanted: 4, circulating: 4), .receive(4), .recycle(4), .publish(wanted: 8, circulating: 8), .receive(8)],
        [.receive(8), .recycle(2), .publish(wanted: 4, circulating: 6), .recycle(6), .publish(wanted: 4, circulating: 4), .receive(4), .recycle(4), .publish(wanted: 4, circulating: 4), .receive(4)],
        [.receive(8), .recycle(8), .publish(wanted: 1, circulating: 1), .receive(1), .recycle(1), .publish(wanted: 1, circulating: 1), .receive(1), .recycle(1), .publish(wanted: 8, circulating: 8), .receive(8)],
        [.receive(8), .recycle(8), .publish(wanted: 4, circulating: 4), .receive(4), .publish(wanted: 8, circulating: 8), .receive(4), .recycle(8), .publish(wanted: 2, circulating: 2), .receive(2)],
        [.receive(3), .recycle(3), .publish(wanted: 2, circulating: 5), .receive(5), .recycle(5), .publish(wanted: 2, circulating: 2), .receive(2), .recycle(2), .publish(wanted: 6, circulating: 6), .receive(6)],
    ]

    @Test("the accounting of withheld and returned buffers, step by step", arguments: scenarios)
    func accounting(_ steps: [Step]) throws {
        try Self.withReceiver(count: 8) { ring, buffers, socket, sender in
            var armed = false
            var held: [UInt16] = []
            for step in steps {
                switch step {
                case .receive(let count):
                    let available = buffers.available
                    try #require(count <= available, "scenario asks for more than the kernel has: \(step)")
                    let filled = try Self.burst(count, expecting: count, ring: ring, buffers: &buffers, armed: &armed, from: sender, to: socket)
                    try #require(filled.bufferIDs.count == count, "\(step): \(filled.bufferIDs)")
                    if count < available {
                        #expect(filled.endResult == nil, "\(step): a buffer was left, the receive stays armed")
                    } else {
                        #expect(filled.endedForLackOfBuffers(mayStayArmed: true), "\(step): \(String(describing: filled.endResult))")
                    }
                    #expect(Set(buffers.reservedBufferIDs).isDisjoint(with: filled.bufferIDs), "\(step): a reserved buffer was filled")
                    held += filled.bufferIDs
                case .recycle(let count):
                    for id in held.prefix(count) { buffers.recycle(id) }
                    held.removeFirst(count)
                case .publish(let wanted, let circulating):
                    buffers.publish(circulating: wanted)
                    #expect(buffers.circulating == circulating, "\(step)")
                    #expect(buffers.available == circulating - held.count, "\(step)")
                }
                Self.expectAccounted(buffers, held: held)
            }
        }
    }
}
