import FuzzSupport
import UringRelay

// Fuzzes `DatagramProcessor` with one datagram (the whole input), relayed twice by a processor
// in each of several set-ups (backend count, packet length, policy, backends down), the way a
// worker does: the second time with the first one's batches still open, or closed by the flush
// timer. Then every batch is closed and every packet "sent" (completed in full), so the
// processor is back where it started, and is kept for the next input as a worker keeps it for
// the next datagram (creating one costs more than relaying: its bucket cache and slot pool).
// Checked:
// - every valid line reaches the backend the router picks (or is dropped by it), byte for
//   byte, in datagram order, in exactly one packet: none split, merged, altered, lost or
//   repeated (compared with `ReferenceSplitter`, not with the scanner);
// - no packet is empty, and none exceeds the packet length, except one holding a single line
//   too long to fit with its newline, which goes alone and without one;
// - each packet's line and byte counts are what it holds;
// - every line is counted exactly once: received = forwarded + dropped by each reason, each
//   reason's count the reference's, and no line dropped for want of a send slot while the
//   assembler said it could take the datagram (its reserve arithmetic);
// - afterwards no batch is pending and every send slot is free;
// - no byte outside the datagram is read and none is written (guard pages, see GuardedBytes).
// A processor's --max-datagram is the smallest of a few sizes that holds the input, so the
// reserve is tight for inputs of about that size.

/// One configuration of the processor.
struct Setup: Sendable {
    var backends: Int
    var packetBytes: Int
    var policy: DownPolicy
    var down: [Int]
    /// Whether the flush timer closes the first datagram's batches before the second arrives.
    var flushBetween: Bool
}

let setups: [Setup] = [
    Setup(backends: 3, packetBytes: 1400, policy: .rehash, down: [], flushBetween: false),
    // The smallest packet length: every line goes alone, without its newline.
    Setup(backends: 1, packetBytes: 2, policy: .rehash, down: [], flushBetween: false),
    Setup(backends: 2, packetBytes: 32, policy: .drop, down: [1], flushBetween: true),
    Setup(backends: 4, packetBytes: 100, policy: .rehash, down: [0, 2], flushBetween: false),
    // Every backend down: fails open, each line to its primary.
    Setup(backends: 2, packetBytes: 64, policy: .drop, down: [0, 1], flushBetween: true),
    // Held lines are packed as usual (the worker holds the packet, not the processor).
    Setup(backends: 3, packetBytes: 512, policy: .hold, down: [1], flushBetween: false),
]

/// What each backend received: its packets' lines in order, each followed by `\n` (a line sent
/// alone, without one, gets it here), and how many lines. Lines hold no `\n`, so equal streams
/// mean the same lines in the same order.
struct Received {
    var streams: [[UInt8]]
    var lines: [Int]

    init(backends: Int) {
        streams = Array(repeating: [], count: backends)
        lines = Array(repeating: 0, count: backends)
    }
}

/// Takes every ready packet, checks it against the packet-length rule and what
/// `sendCompleted` says it carried, adds it to what its backend received and frees its slot.
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
                    require(length <= packetBytes,
                            "a packet of \(length) bytes over the \(packetBytes)-byte limit: \"\(describe(packet))\"")
                    require(newlines == lines, "a packet says \(lines) lines and holds \(newlines)")
                    received.streams[backend].append(contentsOf: packet)
                } else {
                    // A line alone: it did not fit with its newline.
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

/// The --max-datagram sizes processors are kept for.
let maxDatagramSizes = [64, 512, 2048, 8192, 65_535]

/// A processor kept from one input to the next (a class, to hold the non-copyable processor).
final class Kept {
    var processor: DatagramProcessor
    /// The loop turn's time, moving forward across inputs as a worker's does.
    var now: UInt64 = 0

    init(_ setup: Setup, maxDatagramBytes: Int) {
        var router = Router(backendCount: setup.backends, policy: setup.policy)
        for backend in setup.down { router.setDown(backend, true) }
        do {
            processor = try DatagramProcessor(router: router, packetBytes: setup.packetBytes, maxDatagramBytes: maxDatagramBytes)
        } catch {
            fatalError("DatagramProcessor.init failed for \(setup), --max-datagram \(maxDatagramBytes): \(error)")
        }
    }
}

/// Processors by set-up and then by --max-datagram size; only this target's one thread uses them.
nonisolated(unsafe) var kept: [[Kept?]] = setups.map { _ in maxDatagramSizes.map { _ in nil } }

/// Relays the datagram twice in one set-up and checks everything (see the top of the file).
func run(_ setup: Setup, _ processor: inout DatagramProcessor, now: inout UInt64, _ datagram: borrowing GuardedBytes,
         _ input: [UInt8], _ reference: [LineScanner.Line]) {
    let router = processor.router
    let before = processor.counters

    // What should happen to each line, from the reference and the router.
    var expected = Received(backends: setup.backends)
    var droppedByReason: [LineScanner.Malformation: UInt64] = [:]
    var empty: UInt64 = 0
    var droppedDown: UInt64 = 0
    var rehashed: UInt64 = 0
    var forwarded: UInt64 = 0
    for line in reference {
        switch line {
        case .empty: empty += 1
        case .malformed(let reason): droppedByReason[reason, default: 0] += 1
        case .valid(let start, let end, let key):
            let decision = input.withUnsafeBytes { router.route(key: $0.bytes.extracting(key)) }
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
            expected.streams[backend] += input[start..<end]
            expected.streams[backend].append(UInt8(ascii: "\n"))
            expected.lines[backend] += 1
        }
    }
    // The datagram is relayed twice.
    expected.streams = expected.streams.map { $0 + $0 }
    expected.lines = expected.lines.map { 2 * $0 }

    var received = Received(backends: setup.backends)
    let interval: UInt64 = 10_000_000
    require(processor.assembler.canAcceptDatagram, "an idle processor cannot take a datagram")
    datagram.withSpan { processor.relay(datagram: $0, now: now) }
    now += interval
    if setup.flushBetween { processor.assembler.closeExpired(now: now, interval: interval) }
    // A worker sends ready packets before taking a datagram it has no reserve for.
    if !processor.assembler.canAcceptDatagram { drain(&processor, packetBytes: setup.packetBytes, into: &received) }
    require(processor.assembler.canAcceptDatagram, "no reserve with every packet sent")
    datagram.withSpan { processor.relay(datagram: $0, now: now) }
    now += interval
    processor.assembler.closeAll()
    drain(&processor, packetBytes: setup.packetBytes, into: &received)

    for backend in 0..<setup.backends where received.streams[backend] != expected.streams[backend]
        || received.lines[backend] != expected.lines[backend] {
        fatalError("""
            invariant broken: backend \(backend) of \(setup) got \(received.lines[backend]) lines, expected \
            \(expected.lines[backend]): got "\(describe(received.streams[backend]))", expected \
            "\(describe(expected.streams[backend]))" for "\(describe(input))"
            """)
    }

    // This input's counts: the counters now less what they held before it.
    let after = processor.counters
    func counted(_ counter: RelayCounter) -> UInt64 { after[counter] - before[counter] }
    let malformed = LineScanner.Malformation.allCases.reduce(UInt64(0)) { $0 + counted(.dropped($1)) }
    for reason in LineScanner.Malformation.allCases {
        require(counted(.dropped(reason)) == 2 * droppedByReason[reason, default: 0],
                "\(counted(.dropped(reason))) lines dropped as \(reason), expected \(2 * droppedByReason[reason, default: 0])")
    }
    require(counted(.emptyLines) == 2 * empty, "\(counted(.emptyLines)) empty lines counted, expected \(2 * empty)")
    require(counted(.linesForwarded) == 2 * forwarded, "\(counted(.linesForwarded)) forwarded, expected \(2 * forwarded)")
    require(counted(.linesDroppedBackendDown) == 2 * droppedDown, "backend-down drops \(counted(.linesDroppedBackendDown))")
    require(counted(.linesRehashed) == 2 * rehashed, "\(counted(.linesRehashed)) rehashed, expected \(2 * rehashed)")
    require(counted(.linesDroppedNoSendBuffer) == 0, "\(counted(.linesDroppedNoSendBuffer)) lines found no send slot")
    require(counted(.linesReceived) == counted(.linesForwarded) + malformed + counted(.linesDroppedBackendDown)
                + counted(.linesDroppedNoSendBuffer),
            "received \(counted(.linesReceived)) != forwarded + dropped in \(after.report())")
    let failingOpen = setup.down.count == setup.backends && setup.policy != .hold
    require(counted(.linesFailOpen) == (failingOpen ? counted(.linesForwarded) : 0), "fail-open count \(counted(.linesFailOpen))")
    require(!processor.assembler.hasPendingBatches, "a batch still pending after closeAll and every send")
    require(processor.assembler.pool.freeCount == processor.assembler.pool.capacity,
            "\(processor.assembler.pool.capacity - processor.assembler.pool.freeCount) send slots never freed")
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzDatagramProcessor(_ data: UnsafeRawPointer?, _ size: Int) -> CInt {
    // Nothing longer reaches the relay whole (--max-datagram is at most 65 535).
    guard size <= 65_535 else { return -1 }
    let input = UnsafeRawBufferPointer(start: data, count: size)
    let bytes = Array(input)
    let reference = ReferenceSplitter.lines(bytes)
    let after = GuardedBytes(copying: input, guard: .after)
    let before = GuardedBytes(copying: input, guard: .before)
    let sizeClass = maxDatagramSizes.firstIndex { $0 >= max(size, 1) }!
    for (index, setup) in setups.enumerated() {
        // The send-slot pool grows with --max-datagram / --packet-len: at --packet-len 2 and a
        // 64 KiB --max-datagram it would map 26 GB, more than this machine has.
        if setup.packetBytes < 16 && size > 8192 { continue }
        let processor = kept[index][sizeClass] ?? Kept(setup, maxDatagramBytes: maxDatagramSizes[sizeClass])
        kept[index][sizeClass] = processor
        if index.isMultiple(of: 2) {
            run(setup, &processor.processor, now: &processor.now, after, bytes, reference)
        } else {
            run(setup, &processor.processor, now: &processor.now, before, bytes, reference)
        }
    }
    return 0
}
