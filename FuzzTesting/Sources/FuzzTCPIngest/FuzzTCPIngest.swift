import FuzzSupport
import UringRelay

// Fuzzes the TCP ingest path whole: several connections' streams, each framed by its own
// `StreamLineFramer`, read in interleaved cuts, each read's runs of complete lines handed to
// one `DatagramProcessor` as datagrams, the way `TCPIngest` (Drivers/TCPIngest.swift) does:
// - a read takes at most `--max-datagram` less the partial line held (at least one byte), and
//   only while the core can take a datagram (else ready packets are sent first);
// - a read's `.lineTooLong` closes its connection (`too_long`): its partial line is gone with
//   the framer's room, nothing after it is read;
// - a connection whose client closed its side (FIN) hands its last, unterminated line on as a
//   last run (`finish`); one the relay closes (stop, idle, a read error, a reset) counts that
//   line `tcp_partial` with its bytes.
// The harness repeats those few steps of the driver (its sockets are not in the picture); the
// framer and the processor are the product's. What is expected comes from a byte-by-byte
// reference framer and `ReferenceSplitter`, never from the framer or the scanner.
//
// Input: byte 0 picks the set-up (backends, packet length, policy, backends down and
// `--max-datagram`); byte 1: bits 0-1 how many connections (1-4), bits 2-5 for each whether the
// client closes it (0) or the relay does (1), bit 6 whether the flush timer fires between reads,
// bit 7 whether ready packets are sent after every read (else only when the core is full);
// bytes 2-3 seed the cuts, the connection boundaries and the read order; the rest is the bytes
// the clients send, connection after connection.
//
// Checked:
// - every run handed to the core ends with `\n` (but the last line at a client's close), no
//   read hands on more than `--max-datagram` + 1 bytes (what the core's reserve for one
//   datagram covers), and the framer's partial line is the reference's after every read;
// - each backend gets exactly the valid lines routed to it, byte for byte and in the order
//   the reads completed them, each in exactly one packet (none split, merged, altered, lost or
//   repeated, across connections interleaved); no packet over the packet length (but a line
//   too long for it, alone and without its newline);
// - a connection closes `too_long` exactly when the reference finds a line over
//   `--max-datagram` in its stream, and then none of that line or what follows is relayed;
// - every complete line is counted once: received = forwarded + dropped by reason (each
//   reason's count the reference's), empty lines apart; the bytes received are the bytes of
//   the lines handed on; a relay-closed connection's partial line is counted `tcp_partial`
//   once, with its bytes; no line dropped for want of a send slot;
// - afterwards no batch is pending and every send slot is free;
// - no byte outside a read is read (each read is lent from memory ending at a guard page).

/// One configuration of the relay: its pool, packet length and `--max-datagram` (the longest
/// line a TCP connection may send).
struct Setup: Sendable {
    var backends: Int
    var packetBytes: Int
    var policy: DownPolicy
    var down: [Int]
    var maxLineBytes: Int
}

let setups: [Setup] = [
    Setup(backends: 3, packetBytes: 1400, policy: .rehash, down: [], maxLineBytes: 8192),
    // Every line alone, without its newline.
    Setup(backends: 1, packetBytes: 2, policy: .rehash, down: [], maxLineBytes: 16),
    Setup(backends: 2, packetBytes: 32, policy: .drop, down: [1], maxLineBytes: 64),
    // `--max-datagram 1`: only lines of one byte (or none) pass.
    Setup(backends: 4, packetBytes: 100, policy: .rehash, down: [0, 2], maxLineBytes: 1),
    Setup(backends: 3, packetBytes: 512, policy: .hold, down: [1], maxLineBytes: 1400),
    // Every backend down: fails open.
    Setup(backends: 2, packetBytes: 64, policy: .drop, down: [0, 1], maxLineBytes: 7),
    // Packets shorter than the longest line.
    Setup(backends: 2, packetBytes: 40, policy: .rehash, down: [], maxLineBytes: 100),
]

/// A processor kept from one input to the next (creating one costs more than relaying).
final class Kept {
    var processor: DatagramProcessor
    /// The loop turn's time, moving forward across inputs as a worker's does.
    var now: UInt64 = 0

    init(_ setup: Setup) {
        var router = Router(backendCount: setup.backends, policy: setup.policy)
        for backend in setup.down { router.setDown(backend, true) }
        do {
            processor = try DatagramProcessor(router: router, packetBytes: setup.packetBytes, maxDatagramBytes: setup.maxLineBytes)
        } catch {
            fatalError("DatagramProcessor.init failed for \(setup): \(error)")
        }
    }
}

/// Processors by set-up; only this target's one thread uses them.
nonisolated(unsafe) var kept: [Kept?] = setups.map { _ in nil }

/// A small generator for the cuts and the read order.
struct Seeded {
    var state: UInt32
    mutating func next(_ bound: Int) -> Int {
        state = state &* 1_103_515_245 &+ 12_345
        return Int((state >> 16) % UInt32(bound))
    }
}

/// A connection's stream read the plain way, one byte at a time: its complete lines (with
/// `\n`) in order, each with the offset of its `\n`; the first line over the maximum, if any
/// (terminated or not); and the unterminated tail.
struct ReferenceStream {
    var lines: [(bytes: [UInt8], newline: Int)] = []
    /// The offset in the stream where a line over the maximum starts, and where its
    /// `maximum + 1`-th byte is (the byte that makes it too long).
    var tooLong: (start: Int, detected: Int)?
    var tail: [UInt8] = []

    init(_ stream: ArraySlice<UInt8>, maximum: Int) {
        var line: [UInt8] = []
        var lineStart = 0
        for offset in 0..<stream.count {
            let byte = stream[stream.startIndex + offset]
            if byte == UInt8(ascii: "\n") {
                line.append(byte)
                lines.append((line, offset))
                line = []
                lineStart = offset + 1
            } else if line.count == maximum {
                tooLong = (lineStart, offset)
                return
            } else {
                line.append(byte)
            }
        }
        tail = line
    }
}

/// What each backend received (its packets' lines, a line sent alone given its `\n` here) and
/// how many lines.
struct Received {
    var streams: [[UInt8]]
    var lines: [Int]

    init(backends: Int) {
        streams = Array(repeating: [], count: backends)
        lines = Array(repeating: 0, count: backends)
    }
}

/// Sends every ready packet: checks it against the packet-length rule and what `sendCompleted`
/// says it carried, adds it to what its backend received and frees its slot.
func drain(_ processor: inout DatagramProcessor, packetBytes: Int, into received: inout Received) {
    while let slot = processor.assembler.nextReady() {
        let backend = processor.assembler.pool.backend(of: slot)
        let lines = processor.assembler.pool.lineCount(of: slot)
        let length = processor.assembler.pool.length(of: slot)
        require(received.streams.indices.contains(backend), "a packet for backend \(backend)")
        processor.assembler.pool.withBytes(ofSlot: slot) { span in
            span.withUnsafeBytes { packet in
                require(packet.count == length && length > 0 && lines > 0, "a packet of \(length) bytes and \(lines) lines")
                let newlines = packet.reduce(0) { $0 + ($1 == UInt8(ascii: "\n") ? 1 : 0) }
                if packet.last == UInt8(ascii: "\n") {
                    require(length <= packetBytes, "a packet of \(length) bytes over the \(packetBytes)-byte limit")
                    require(newlines == lines, "a packet says \(lines) lines and holds \(newlines)")
                    received.streams[backend].append(contentsOf: packet)
                } else {
                    require(lines == 1 && newlines == 0 && length >= packetBytes,
                            "a packet without a final newline: \(lines) lines, \(length) bytes, limit \(packetBytes)")
                    received.streams[backend].append(contentsOf: packet)
                    received.streams[backend].append(UInt8(ascii: "\n"))
                }
            }
        }
        received.lines[backend] += lines
        let outcome = processor.sendCompleted(slot: slot, result: Int32(length))
        require(outcome.backend == backend && outcome.lines == lines && outcome.bytes == length && outcome.isAccepted,
                "send outcome \(outcome) for a packet of \(length) bytes and \(lines) lines to backend \(backend)")
    }
}

/// What the reference expects of the lines handed to the core, in the order they were.
struct Expected {
    var received: Received
    var droppedByReason: [LineScanner.Malformation: UInt64] = [:]
    var empty: UInt64 = 0
    var forwarded: UInt64 = 0
    var droppedDown: UInt64 = 0
    var rehashed: UInt64 = 0
    var bytes: UInt64 = 0

    init(backends: Int) { received = Received(backends: backends) }

    /// One line handed on (with its `\n`, or without at a client's close), as the core should
    /// take it.
    mutating func add(_ line: [UInt8], router: Router) {
        bytes += UInt64(line.count)
        for verdict in ReferenceSplitter.lines(line) {
            switch verdict {
            case .empty: empty += 1
            case .malformed(let reason): droppedByReason[reason, default: 0] += 1
            case .valid(let start, let end, let key):
                let decision = line.withUnsafeBytes { router.route(key: $0.bytes.extracting(key)) }
                let backend: Int
                switch decision {
                case .send(let primary), .hold(let primary): backend = primary
                case .rehash(_, let other):
                    rehashed += 1
                    backend = other
                case .drop:
                    droppedDown += 1
                    continue
                }
                forwarded += 1
                received.streams[backend] += line[start..<end]
                received.streams[backend].append(UInt8(ascii: "\n"))
                received.lines[backend] += 1
            }
        }
    }
}

/// A connection's framer (non-copyable: kept in a box so the connections can sit in an array).
final class FramerBox {
    var framer: StreamLineFramer
    init(maximumLineBytes: Int) { framer = StreamLineFramer(maximumLineBytes: maximumLineBytes) }
}

/// One client connection as the harness drives it.
struct Connection {
    var stream: ArraySlice<UInt8>
    var reference: ReferenceStream
    /// How far its client's bytes have been read.
    var offset: Int
    /// The next reference line not yet handed on.
    var nextLine = 0
    var relayCloses: Bool
    var open = true
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTCPIngest(_ data: UnsafeRawPointer?, _ size: Int) -> CInt {
    let input = Array(UnsafeRawBufferPointer(start: data, count: size))
    guard input.count >= 4, input.count <= 200_000 else { return -1 }
    let setupIndex = Int(input[0]) % setups.count
    let setup = setups[setupIndex]
    let connectionCount = Int(input[1] & 0x03) + 1
    let flushBetween = input[1] & 0x40 != 0
    let sendEveryRead = input[1] & 0x80 != 0
    var seeded = Seeded(state: UInt32(input[2]) << 8 | UInt32(input[3]))
    let bytes = input[4...]

    // The clients' streams: the bytes cut at seeded points into `connectionCount` pieces.
    var bounds = (1..<connectionCount).map { _ in bytes.startIndex + seeded.next(bytes.count + 1) }.sorted()
    bounds = [bytes.startIndex] + bounds + [bytes.endIndex]
    var connections: [Connection] = (0..<connectionCount).map { index in
        let stream = bytes[bounds[index]..<bounds[index + 1]]
        return Connection(
            stream: stream, reference: ReferenceStream(stream, maximum: setup.maxLineBytes), offset: 0,
            relayCloses: input[1] & (0x04 << index) != 0)
    }
    let framers = connections.map { _ in FramerBox(maximumLineBytes: setup.maxLineBytes) }

    let state = kept[setupIndex] ?? Kept(setup)
    kept[setupIndex] = state
    let router = state.processor.router
    let before = state.processor.counters
    var received = Received(backends: setup.backends)
    var expected = Expected(backends: setup.backends)
    var closedTooLong = 0
    var partialLines = 0
    var partialBytes = 0
    let interval: UInt64 = 10_000_000

    /// Hands a run the framer delivered to the core, as `TCPIngest.frame` does.
    func handOn(_ run: RawSpan, _ processor: inout DatagramProcessor, now: UInt64) {
        processor.receive(.datagram(length: run.byteCount), run, now: now)
    }

    while true {
        let open = connections.indices.filter { connections[$0].open }
        if open.isEmpty { break }
        let index = open[seeded.next(open.count)]
        var connection = connections[index]
        defer { connections[index] = connection }
        let framer = framers[index]
        let partial = framer.framer.partialByteCount
        let pendingInReference = connection.offset - (connection.nextLine == 0 ? 0
            : connection.reference.lines[connection.nextLine - 1].newline + 1)
        require(partial == pendingInReference,
                "the framer holds \(partial) bytes of a partial line, the reference \(pendingInReference)")

        if connection.offset == connection.stream.count {
            // Everything sent was read: the connection closes.
            connection.open = false
            if connection.relayCloses {
                if partial > 0 {
                    partialLines += 1
                    partialBytes += partial
                }
            } else {
                if !connection.reference.tail.isEmpty { expected.add(connection.reference.tail, router: router) }
                let finishing: (RawSpan) -> Void = { run in
                    require(run.byteCount <= setup.maxLineBytes, "a last line of \(run.byteCount) bytes handed on")
                    handOn(run, &state.processor, now: state.now)
                }
                framer.framer.finish(deliver: finishing)
            }
            continue
        }

        // A read, as TCPIngest.read takes it: only with room in the core for a datagram, at
        // most --max-datagram less the partial line held.
        if !state.processor.assembler.canAcceptDatagram {
            drain(&state.processor, packetBytes: setup.packetBytes, into: &received)
        }
        require(state.processor.assembler.canAcceptDatagram, "no room for a datagram with every packet sent")
        let limit = max(1, setup.maxLineBytes - partial)
        let wanted = seeded.next(8) == 0 ? seeded.next(4096) + 1 : seeded.next(64) + 1
        let count = min(wanted, limit, connection.stream.count - connection.offset)
        let start = connection.stream.startIndex + connection.offset
        let read = GuardedBytes(copying: UnsafeRawBufferPointer(start: data.map { $0 + start }, count: count), guard: .after)
        var handedOn = 0
        var runs = 0
        let outcome = read.withSpan { span in
            let deliver: (RawSpan) -> Void = { run in
                let last = run.withUnsafeBytes { $0.last }
                require(last == UInt8(ascii: "\n"), "a run handed on does not end with \\n")
                handedOn += run.byteCount
                runs += 1
                handOn(run, &state.processor, now: state.now)
            }
            return framer.framer.feed(span, deliver: deliver)
        }
        require(framer.framer.verifyInvariants(), "the framer's invariants broken after a read")
        require(runs <= 2, "one read handed on \(runs) runs")
        require(handedOn <= setup.maxLineBytes + 1,
                "one read handed on \(handedOn) bytes, more than --max-datagram \(setup.maxLineBytes) and a newline")
        let end = connection.offset + count
        let detected = connection.reference.tooLong.map { $0.detected < end } ?? false
        require((outcome == .lineTooLong) == detected,
                "\(outcome) on bytes \(connection.offset)..<\(end) of a connection, reference: too long at \(String(describing: connection.reference.tooLong))")
        // The lines this read completed, in the reference's terms.
        while connection.nextLine < connection.reference.lines.count,
              connection.reference.lines[connection.nextLine].newline < end {
            expected.add(connection.reference.lines[connection.nextLine].bytes, router: router)
            connection.nextLine += 1
        }
        connection.offset = end
        if outcome == .lineTooLong {
            closedTooLong += 1
            connection.open = false
            // Closed, its framer empty: a relay close counts no partial line.
            let left = framer.framer.partialByteCount
            require(left == 0, "a framer holds \(left) bytes after a line too long")
        }
        if sendEveryRead { drain(&state.processor, packetBytes: setup.packetBytes, into: &received) }
        state.now += interval
        if flushBetween { state.processor.assembler.closeExpired(now: state.now, interval: interval) }
    }
    state.processor.assembler.closeAll()
    drain(&state.processor, packetBytes: setup.packetBytes, into: &received)

    let tooLongExpected = connections.filter { $0.reference.tooLong != nil }.count
    require(closedTooLong == tooLongExpected, "\(closedTooLong) connections closed too_long, expected \(tooLongExpected)")
    let partialExpected = connections.filter { $0.relayCloses && $0.reference.tooLong == nil && !$0.reference.tail.isEmpty }
    require(partialLines == partialExpected.count && partialBytes == partialExpected.reduce(0) { $0 + $1.reference.tail.count },
            "tcp_partial \(partialLines) lines, \(partialBytes) bytes; expected \(partialExpected.count)")
    for backend in 0..<setup.backends where received.streams[backend] != expected.received.streams[backend]
        || received.lines[backend] != expected.received.lines[backend] {
        fatalError("""
            invariant broken: backend \(backend) of \(setup) got \(received.lines[backend]) lines, expected \
            \(expected.received.lines[backend]): got "\(describe(received.streams[backend]))", expected \
            "\(describe(expected.received.streams[backend]))" for "\(describe(bytes))"
            """)
    }

    let after = state.processor.counters
    func counted(_ counter: RelayCounter) -> UInt64 { after[counter] - before[counter] }
    let malformed = LineScanner.Malformation.allCases.reduce(UInt64(0)) { $0 + counted(.dropped($1)) }
    for reason in LineScanner.Malformation.allCases {
        require(counted(.dropped(reason)) == expected.droppedByReason[reason, default: 0],
                "\(counted(.dropped(reason))) lines dropped as \(reason), expected \(expected.droppedByReason[reason, default: 0])")
    }
    require(counted(.emptyLines) == expected.empty, "\(counted(.emptyLines)) empty lines counted, expected \(expected.empty)")
    require(counted(.linesForwarded) == expected.forwarded, "\(counted(.linesForwarded)) forwarded, expected \(expected.forwarded)")
    require(counted(.linesDroppedBackendDown) == expected.droppedDown, "backend-down drops \(counted(.linesDroppedBackendDown))")
    require(counted(.linesRehashed) == expected.rehashed, "\(counted(.linesRehashed)) rehashed, expected \(expected.rehashed)")
    require(counted(.linesDroppedNoSendBuffer) == 0, "\(counted(.linesDroppedNoSendBuffer)) lines found no send slot")
    require(counted(.bytesReceived) == expected.bytes, "\(counted(.bytesReceived)) bytes received, expected \(expected.bytes)")
    require(counted(.linesReceived) == counted(.linesForwarded) + malformed + counted(.linesDroppedBackendDown),
            "received \(counted(.linesReceived)) != forwarded + dropped in \(after.report())")
    let failingOpen = setup.down.count == setup.backends && setup.policy != .hold
    require(counted(.linesFailOpen) == (failingOpen ? counted(.linesForwarded) : 0), "fail-open count \(counted(.linesFailOpen))")
    require(!state.processor.assembler.hasPendingBatches, "a batch still pending after closeAll and every send")
    require(state.processor.assembler.pool.freeCount == state.processor.assembler.pool.capacity,
            "\(state.processor.assembler.pool.capacity - state.processor.assembler.pool.freeCount) send slots never freed")
    return 0
}
