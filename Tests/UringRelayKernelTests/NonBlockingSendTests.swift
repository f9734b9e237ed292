@testable import RelayKernel
import Foundation
import Glibc
import Testing
@testable import UringRelay

/// What non-blocking `sendmmsg` batches towards a backend behind a slow link gave.
struct NonBlockingRounds: Sendable {
    /// Rounds in which some packets went and the rest found the socket buffer full.
    var shortRounds = 0
    /// Packets reported as sent twice (a refusal retry), though the backend never refused.
    var retried = 0
    /// Rounds whose results were not a sent prefix followed by an unsent (`-EAGAIN`) rest.
    var malformed: [String] = []
    /// Packets reported sent, and packets the backend received.
    var sent = 0
    var received = 0
}

@Suite("Non-blocking sends to a full socket buffer: a short sendmmsg is a full buffer, not a refusal", .serialized, .timeLimit(.minutes(1)), .onOwnThread)
struct NonBlockingSendTests {
    static let rounds = 400
    static let packetBytes = 200

    /// Sends `rounds` batches of 64 packets with `MSG_DONTWAIT` to a listening backend behind a
    /// 10 Mbit/s class on a private loopback, from a socket with a 4 KiB `SO_SNDBUF`: the link
    /// frees room a packet at a time (some 0.2 ms each), so calls keep stopping short, and room
    /// often comes back between the short call and the next one.
    func sendBehindSlowLink() throws -> NonBlockingRounds {
        let loopback = ShapedLoopback(rate: "10mbit")
        return try loopback.run { loopback in
            let backend = try TestBackend()
            try loopback.shape(port: backend.address.port)
            let sockets = try BackendSockets(connecting: [backend.address], sendBufferBytes: 4096)
            var pool = try SendBufferPool(capacity: 64, slotBytes: 1_024)
            var batch = SendBatch(capacity: 64)
            var outcome = NonBlockingRounds()
            let payload = [UInt8](repeating: UInt8(ascii: "0"), count: Self.packetBytes - 1)
            let deadline = Date().addingTimeInterval(20)
            for round in 0..<Self.rounds where Date() < deadline {
                var slots: [Int] = []
                while let slot = pool.acquire(for: 0) {
                    pool.append(payload.span.bytes, to: slot)
                    slots.append(slot)
                    batch.append(slot: slot, backend: 0)
                }
                batch.send(from: pool, to: sockets, nonBlocking: true)
                let results = (0..<batch.count).map { batch.result($0) }
                outcome.retried += (0..<batch.count).filter { batch.wasRetried($0) }.count
                let sent = results.prefix { $0 > 0 }.count
                if results.dropFirst(sent).contains(where: { $0 != -EAGAIN }) {
                    outcome.malformed.append("round \(round): \(results)")
                }
                if sent > 0 && sent < results.count { outcome.shortRounds += 1 }
                outcome.sent += sent
                batch.removeAll()
                for slot in slots { pool.release(slot) }
            }
            // Everything reported sent reaches the backend once the link has let it through.
            outcome.received = drainCount(backend.socket, expecting: outcome.sent, seconds: 10)
            return outcome
        }
    }

    @Test("a short non-blocking sendmmsg leaves the rest unsent (-EAGAIN), in order; no packet is reported as a refusal retry, and every packet reported sent arrives")
    func shortCallIsAFullBuffer() throws {
        let outcome = try sendBehindSlowLink()
        #expect(outcome.shortRounds > 0, "no call stopped short: the link never filled the socket buffer")
        #expect(outcome.malformed.isEmpty, "\(outcome.malformed.prefix(3))")
        #expect(outcome.retried == 0, "\(outcome.retried) packets reported as refusal retries; the backend never refused")
        #expect(outcome.received == outcome.sent, "\(outcome.received) of \(outcome.sent) packets reported sent arrived")
    }
}

/// Reads datagrams from `socket` until `expecting` have come or `seconds` pass with none.
private func drainCount(_ socket: borrowing UDPSocket, expecting: Int, seconds: Double) -> Int {
    var count = 0
    var buffer = [UInt8](repeating: 0, count: 65_536)
    let descriptor = PollSet.descriptor(of: socket)
    while count < expecting {
        var entry = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
        guard poll(&entry, 1, Int32(seconds * 1_000)) > 0 else { break }
        while recv(descriptor, &buffer, buffer.count, Int32(MSG_DONTWAIT)) >= 0 { count += 1 }
    }
    return count
}
