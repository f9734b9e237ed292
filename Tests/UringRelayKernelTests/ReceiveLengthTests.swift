@testable import RelayKernel
import Foundation
import Glibc
import Testing
@testable import UringRelay

/// The truncation rule of issue 16 at the edge of `--max-datagram`, on both drivers: a datagram
/// of exactly `--max-datagram` bytes passes whole, one byte more is dropped and counted as
/// truncated. The io_uring driver receives with a multishot `recv` into buffers one byte larger
/// than that and the portable one with `recvmmsg` into the same; each primitive is checked on
/// its own, and then the relay.
@Suite("Datagram length at the edge of --max-datagram (issue 16)", .serialized, .timeLimit(.minutes(1)), .onOwnThread)
struct ReceiveLengthTests {
    /// What one receive produced, in a form the tests compare.
    enum Seen: Equatable, CustomStringConvertible {
        case datagram([UInt8])
        case truncated(fullLength: Int)
        case malformed
        /// A multishot `recv`'s empty datagram: a result of 0 with no buffer.
        case emptyWithoutBuffer

        var description: String {
            switch self {
            case .datagram(let bytes): "datagram(\(bytes.count) bytes)"
            case .truncated(let length): "truncated(\(length))"
            case .malformed: "malformed"
            case .emptyWithoutBuffer: "empty (no buffer)"
            }
        }

        init(_ payload: ReceivedPayload, _ bytes: RawSpan) {
            switch payload {
            case .datagram(let length):
                let copy = bytes.withUnsafeBytes { Array($0) }
                self = copy.count == length ? .datagram(copy) : .malformed
            case .truncated(let fullLength): self = .truncated(fullLength: fullLength)
            case .malformed: self = .malformed
            }
        }
    }

    /// Datagrams of `maxDatagram - 1`, `maxDatagram`, `maxDatagram + 1` bytes, one much longer
    /// (at most the largest UDP payload over IPv4), then an empty one, each byte distinct
    /// enough that a shifted or mixed-up copy shows.
    static func datagrams(around maxDatagram: Int) -> [[UInt8]] {
        let lengths = [maxDatagram - 1, maxDatagram, maxDatagram + 1, min(3 * maxDatagram + 7, 65_507), 0]
        return lengths.enumerated().map { index, length in
            (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ index) }
        }
    }

    /// What each of `datagrams(around:)` must be received as: whole up to `maxDatagram` bytes,
    /// truncated beyond. `exactFullLength`: whether the receive reports a too-long datagram's
    /// whole length (a `recv` with `MSG_TRUNC` does; `recvmmsg` reports what it copied, at
    /// least `maxDatagram + 1`).
    static func expectations(around maxDatagram: Int, empty: Seen) -> [Seen] {
        datagrams(around: maxDatagram).map { bytes in
            if bytes.isEmpty { return empty }
            return bytes.count <= maxDatagram ? .datagram(bytes) : .truncated(fullLength: bytes.count)
        }
    }

    /// `--max-datagram` values: small, a jumbo-frame-less MTU's, the default, and the largest
    /// whose one-byte-longer datagram still fits in UDP over IPv4 (65 507 bytes).
    static let edges = [32, 1_432, 8_192, 65_506]

    @Test("the driver's receive primitive passes max-datagram bytes whole and reports max-datagram + 1 as truncated", arguments: ioDrivers, edges)
    func receivePrimitive(driver: IOBackendChoice, maxDatagram: Int) throws {
        try requireDriver(driver)
        let socket = try UDPSocket.bound(to: SocketAddress(numericHost: "127.0.0.1", port: 0)!, receiveBufferBytes: 1 << 20)
        let sender = try UDPSocket.bound(to: SocketAddress(numericHost: "127.0.0.1", port: 0)!)
        let sent = Self.datagrams(around: maxDatagram)
        switch driver {
        case .uring:
            let seen = try Self.receiveWithMultishotRecv(on: socket, from: sender, sending: sent, maxDatagram: maxDatagram)
            #expect(seen == Self.expectations(around: maxDatagram, empty: .emptyWithoutBuffer))
        default:
            #expect(driver == .portable)
            let seen = try Self.receiveWithRecvmmsg(on: socket, from: sender, sending: sent, maxDatagram: maxDatagram)
            let expected = Self.expectations(around: maxDatagram, empty: .datagram([]))
            #expect(seen.count == expected.count, "\(seen)")
            for (got, want) in zip(seen, expected) {
                if case .truncated(let wanted) = want, case .truncated(let reported) = got {
                    #expect(reported > maxDatagram && reported <= wanted)
                } else {
                    #expect(got == want)
                }
            }
        }
    }

    /// Arms one multishot `recv` as the io_uring driver does, sends `datagrams`, and returns
    /// what each completion delivered, checking the receive stays armed until the empty one.
    static func receiveWithMultishotRecv(
        on socket: borrowing UDPSocket, from sender: borrowing UDPSocket, sending datagrams: [[UInt8]], maxDatagram: Int
    ) throws -> [Seen] {
        let ring = try Ring(entries: 8, completionEntries: 32)
        var buffers = try ProvidedBufferRing(ring: ring, groupID: 0, count: 8, payloadBytes: maxDatagram)
        #expect(buffers.bufferBytes == maxDatagram + 1)
        try ring.armMultishotReceive(on: socket, buffers: buffers, userData: UserData(.receive, index: 7))
        try ring.submitAndWait(completions: 0, timeoutNanoseconds: 0, minimumWaitMicroseconds: 0)
        for datagram in datagrams { try sender.send(datagram, to: socket.localAddress) }
        var seen: [Seen] = []
        let deadline = MonotonicClock.nanoseconds() + 5_000_000_000
        while seen.count < datagrams.count && MonotonicClock.nanoseconds() < deadline {
            try ring.submitAndWait(completions: 1, timeoutNanoseconds: 100_000_000, minimumWaitMicroseconds: 0)
            while let completion = ring.nextCompletion() {
                #expect(completion.userData == UserData(.receive, index: 7))
                #expect(completion.result >= 0, "receive failed: errno \(-completion.result)")
                let last = seen.count == datagrams.count - 1
                #expect(completion.hasMore == !last, "the receive ends at the empty datagram, not before")
                if let bufferID = completion.bufferID {
                    buffers.take(bufferID)
                    seen.append(buffers.withPayload(of: bufferID, result: completion.result) { Seen($0, $1) })
                    buffers.recycle(bufferID)
                    buffers.publish()
                } else if completion.result == 0 {
                    seen.append(.emptyWithoutBuffer)
                } else {
                    seen.append(.malformed)
                }
            }
        }
        ring.close()
        #expect(buffers.held == 0)  // the buffers outlive the ring, as they must
        return seen
    }

    /// Receives with `recvmmsg` into a `DatagramBatch` as the portable driver does.
    static func receiveWithRecvmmsg(
        on socket: borrowing UDPSocket, from sender: borrowing UDPSocket, sending datagrams: [[UInt8]], maxDatagram: Int
    ) throws -> [Seen] {
        var batch = try DatagramBatch(count: 8, payloadBytes: maxDatagram)
        for datagram in datagrams { try sender.send(datagram, to: socket.localAddress) }
        var seen: [Seen] = []
        let deadline = MonotonicClock.nanoseconds() + 5_000_000_000
        while seen.count < datagrams.count && MonotonicClock.nanoseconds() < deadline {
            var poller = pollfd(fd: socket.descriptor, events: Int16(POLLIN), revents: 0)
            guard poll(&poller, 1, 100) == 1 else { continue }
            let received = try batch.receive(descriptor: socket.descriptor, limit: 8)
            for index in 0..<received { seen.append(batch.withDatagram(index) { Seen($0, $1) }) }
        }
        return seen
    }

    @Test("--max-datagram N: a datagram of exactly N bytes is relayed whole, one of N + 1 is dropped and counted as truncated", arguments: ioDrivers, edges)
    func relayAtTheEdge(driver: IOBackendChoice, maxDatagram: Int) throws {
        try requireDriver(driver)
        let backends = [try TestBackend()]
        let relay = try InProcessRelay(backends: backends, driver: driver) { $0.maxDatagramBytes = maxDatagram }
        // One line each, `edge.N:` then digits then `|g`, padded to the length wanted.
        func line(_ length: Int) -> String {
            let head = "edge.\(length):"
            return head + String(repeating: "7", count: length - head.utf8.count - 2) + "|g"
        }
        let exact = line(maxDatagram)
        let over = line(maxDatagram + 1)
        #expect(exact.utf8.count == maxDatagram && over.utf8.count == maxDatagram + 1)
        try send(["before:1|c", exact, over, "after:1|c"], to: relay.address)
        let received = try collect(from: backends, expectedLines: 3)
        let counters = relay.stop()
        #expect(received.lines[0] == ["before:1|c", exact, "after:1|c"])
        #expect(counters[.datagramsTruncated] == 1)
        #expect(counters[.datagramsReceived] == 3)
        #expect(counters[.bytesReceived] == UInt64("before:1|c".utf8.count + maxDatagram + "after:1|c".utf8.count))
    }
}
