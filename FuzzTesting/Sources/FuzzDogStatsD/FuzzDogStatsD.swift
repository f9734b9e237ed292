import FuzzSupport
import UringRelay

// Fuzzes the DogStatsD paths of `DatagramProcessor`: `--validate strict` (`LineValidator`) and
// `--hash-key name+tags` (`RoutingKey`), with service checks and events. The first input byte
// picks the set-up (bit 0: strict, bit 1: name+tags, the rest mod 3: jump, etsy or ketama over
// 3 backends); the rest is one datagram. Checked:
// - every line `ReferenceSplitter` finds valid is either forwarded or dropped by the strict
//   validator, and every forwarded one reaches, byte for byte and in datagram order, the
//   backend the router picks for the key written out here from the definition (the name; under
//   name+tags the name, `|#` and its distinct non-empty tags sorted, or past 64 tags `|#~` and the
//   hex sum of their FNV-1a 64s, repeats included; tags those of the last tags field, found by
//   splitting the line's fields with plain array code): no
//   line split, merged or altered, and tag order never matters;
// - every line is counted exactly once: received = forwarded + dropped by each reason, the
//   scanner's reasons as the reference says and the validator's as it says of the line alone;
// - the validator and the key hash read no byte outside their line: each valid line is also
//   checked alone, copied to the end of a read-only page followed by an inaccessible one (and
//   to the start of one after such a page), where one byte too far faults; the verdict and the
//   hash are the same there as in the datagram.

/// The set-ups: validation, key and hash mode.
struct Setup {
    var validation: ValidationMode
    var hashKey: HashKeyMode
    var hashMode: HashMode

    init(_ selector: UInt8) {
        validation = selector & 1 == 0 ? .loose : .strict
        hashKey = selector & 2 == 0 ? .name : .nameAndTags
        hashMode = [HashMode.jump, .etsy, .ketama][Int(selector >> 2) % 3]
    }

    var index: Int { (validation == .strict ? 1 : 0) + (hashKey == .nameAndTags ? 2 : 0) + 4 * [HashMode.jump, .etsy, .ketama].firstIndex(of: hashMode)! }
}

let backendCount = 3
let backends = (1...backendCount).map { BackendAddress(host: "10.0.0.\($0)", port: 8125) }

/// Processors kept from one input to the next, by set-up.
final class Kept {
    var processor: DatagramProcessor

    init(_ setup: Setup) {
        let router = setup.hashMode == .jump
            ? Router(backendCount: backendCount) : Router(backends: backends, hashMode: setup.hashMode)
        do {
            processor = try DatagramProcessor(
                router: router, packetBytes: 1400, maxDatagramBytes: 8192, validation: setup.validation, hashKey: setup.hashKey)
        } catch {
            fatalError("DatagramProcessor.init failed: \(error)")
        }
    }
}

nonisolated(unsafe) var kept: [Kept?] = Array(repeating: nil, count: 12)

/// FNV-1a 64, written again.
func fnv(_ bytes: some Sequence<UInt8>) -> UInt64 {
    var hash: UInt64 = 0xcbf2_9ce4_8422_2325
    for byte in bytes { hash = (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01b3 }
    return hash
}

/// The tags field of a valid line (its bytes after `#`), from the definition: the line's last
/// field starting `#` among its optional fields, as the Datadog agent splits them at `|`: a
/// metric's after its values and type, a service check's after its status (its `m:` message
/// is a field like any), an event's from the second byte after its text.
func referenceTags(_ line: [UInt8], key: Range<Int>) -> [UInt8]? {
    var fields: ArraySlice<ArraySlice<UInt8>>
    if line.starts(with: Array("_e{".utf8)) {
        // The text's length is the header's second number; one byte follows it unread.
        let colon = line.firstIndex(of: UInt8(ascii: ":"))!
        let lengths = Array(line[3..<colon - 1])
        let comma = lengths.firstIndex(of: UInt8(ascii: ","))!
        let textLength = Int(String(decoding: lengths[(comma + 1)...], as: UTF8.self))!
        let textEnd = key.upperBound + 1 + textLength
        if textEnd >= line.count { return nil }
        fields = line[(textEnd + 1)...].split(separator: UInt8(ascii: "|"), omittingEmptySubsequences: false)[...]
    } else {
        // A metric: `:values`, the type, then the fields; a service check: nothing (the key
        // ends at a `|`), the status, then the fields.
        fields = line[key.upperBound...].split(separator: UInt8(ascii: "|"), omittingEmptySubsequences: false).dropFirst(2)
    }
    return fields.last { $0.first == UInt8(ascii: "#") }.map { Array($0.dropFirst()) }
}

/// The routing key of a valid line under `hashKey`, written out from the definition.
func referenceKey(_ line: [UInt8], key: Range<Int>, _ hashKey: HashKeyMode) -> [UInt8] {
    let name = Array(line[key])
    guard hashKey == .nameAndTags, let field = referenceTags(line, key: key) else { return name }
    let tags = field.split(separator: UInt8(ascii: ","), omittingEmptySubsequences: true).map(Array.init)
    if tags.isEmpty { return name }
    if tags.count > 64 {
        let sum = tags.reduce(UInt64(0)) { $0 &+ fnv($1) }
        let hex = String(sum, radix: 16)
        return name + Array("|#~\(String(repeating: "0", count: 16 - hex.count))\(hex)".utf8)
    }
    let sorted = Set(tags).sorted { $0.lexicographicallyPrecedes($1) }
    return name + Array("|#".utf8) + Array(sorted.joined(separator: [UInt8(ascii: ",")]))
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzDogStatsD(_ data: UnsafeRawPointer?, _ size: Int) -> CInt {
    guard size >= 1, size <= 8193 else { return -1 }
    let all = UnsafeRawBufferPointer(start: data, count: size)
    let setup = Setup(all[0])
    let input = UnsafeRawBufferPointer(rebasing: all[1...])
    let bytes = Array(input)
    let reference = ReferenceSplitter.lines(bytes)
    let holder = kept[setup.index] ?? Kept(setup)
    kept[setup.index] = holder
    let router = holder.processor.router

    var streams = Array(repeating: [UInt8](), count: backendCount)
    var dropped: [LineScanner.Malformation: UInt64] = [:]
    var forwarded: UInt64 = 0
    var received: UInt64 = 0
    for line in reference {
        switch line {
        case .empty:
            continue
        case .malformed(let reason):
            received += 1
            dropped[reason, default: 0] += 1
        case .valid(let start, let end, let key):
            received += 1
            let alone = Array(bytes[start..<end])
            let localKey = key.lowerBound - start..<key.upperBound - start
            // The line alone, against guard pages on either side: the verdict must not change.
            var verdicts: [LineScanner.Malformation?] = []
            for side in [GuardedBytes.Side.after, .before] {
                alone.withUnsafeBytes { raw in
                    let guarded = GuardedBytes(copying: raw, guard: side)
                    guarded.withSpan { span in
                        verdicts.append(LineValidator.check(span, line: 0..<alone.count, key: localKey))
                        _ = DogStatsD.tags(span, line: 0..<alone.count, key: localKey)
                    }
                }
            }
            let inDatagram = bytes.withUnsafeBytes { LineValidator.check($0.bytes, line: start..<end, key: key) }
            require(verdicts[0] == verdicts[1] && verdicts[0] == inDatagram,
                    "verdicts \(verdicts) alone, \(String(describing: inDatagram)) in the datagram for \"\(describe(alone))\"")
            if setup.validation == .strict, let reason = inDatagram {
                dropped[reason, default: 0] += 1
                continue
            }
            let routingKey = referenceKey(alone, key: localKey, setup.hashKey)
            let backend: Int
            switch routingKey.withUnsafeBytes({ router.route(key: $0.bytes) }) {
            case .send(let primary), .hold(let primary): backend = primary
            case .rehash(_, let other): backend = other
            case .drop: fatalError("a backend down in a set-up with every backend up")
            }
            forwarded += 1
            streams[backend] += alone
            streams[backend].append(UInt8(ascii: "\n"))
        }
    }

    let before = holder.processor.counters
    let guarded = GuardedBytes(copying: input, guard: .after)
    guarded.withSpan { holder.processor.relay(datagram: $0, now: 1) }
    holder.processor.assembler.closeAll()
    var got = Array(repeating: [UInt8](), count: backendCount)
    while let slot = holder.processor.assembler.nextReady() {
        let backend = holder.processor.assembler.pool.backend(of: slot)
        let length = holder.processor.assembler.pool.length(of: slot)
        holder.processor.assembler.pool.withBytes(ofSlot: slot) { span in
            span.withUnsafeBytes { got[backend] += $0 }
        }
        if got[backend].last != UInt8(ascii: "\n") { got[backend].append(UInt8(ascii: "\n")) }
        _ = holder.processor.sendCompleted(slot: slot, result: Int32(length))
    }
    for backend in 0..<backendCount where got[backend] != streams[backend] {
        fatalError("""
            invariant broken: backend \(backend) under \(setup.validation)/\(setup.hashKey.rawValue)/\(setup.hashMode) got \
            "\(describe(got[backend]))", expected "\(describe(streams[backend]))" for "\(describe(bytes))"
            """)
    }
    let after = holder.processor.counters
    func counted(_ counter: RelayCounter) -> UInt64 { after[counter] - before[counter] }
    require(counted(.linesReceived) == received, "\(counted(.linesReceived)) lines received, expected \(received)")
    require(counted(.linesForwarded) == forwarded, "\(counted(.linesForwarded)) forwarded, expected \(forwarded)")
    var droppedTotal: UInt64 = 0
    for reason in LineScanner.Malformation.allCases {
        droppedTotal += counted(.dropped(reason))
        require(counted(.dropped(reason)) == dropped[reason, default: 0],
                "\(counted(.dropped(reason))) dropped as \(reason), expected \(dropped[reason, default: 0])")
    }
    require(counted(.linesReceived) == counted(.linesForwarded) + droppedTotal, "a line counted twice or not at all")
    require(holder.processor.assembler.pool.freeCount == holder.processor.assembler.pool.capacity, "send slots never freed")
    return 0
}
