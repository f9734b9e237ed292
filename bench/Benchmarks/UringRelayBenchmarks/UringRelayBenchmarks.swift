// Micro-benchmarks of the relay's per-line hot path (STYLE.md §6): time and allocations per
// operation. Run from bench/:  swift package --disable-sandbox benchmark
//
// Every benchmark loops `benchmark.scaledIterations` times inside one measured iteration, so
// the figures printed are per operation (`scalingFactor`). Set-up (building the datagram,
// creating the non-copyable assembler/processor and warming it up) happens before
// `startMeasurement()`, so only the steady state is timed and its allocations counted.

import BenchKit
import Benchmark
import Glibc
import RelayKernel
import UringRelay

// MARK: - Workload

/// Realistic StatsD lines: 32-47 bytes (37 on average), names of 22-31 bytes; counters (some
/// `|@0.5`), timers with `|@0.1`, gauges and DogStatsD-tagged lines (`|#env:prod`), in a fixed
/// order so every run measures the same bytes. 36 of them fill a 1400-byte datagram (1370 bytes).
func makeLines() -> [String] {
    var lines: [String] = []
    for index in 0..<512 {
        let host = index % 16
        let shard = index % 7
        switch index % 8 {
        case 0: lines.append("api.requests.host-\(host).status_200:1|c")
        case 4: lines.append("api.requests.host-\(host).status_500:1|c|@0.5")
        case 1, 5: lines.append("db.query.users.p\(shard).latency:12.5|ms|@0.1")
        case 2: lines.append("queue.depth.shard-\(shard).backlog:42|g")
        case 3: lines.append("http.req.route-\(host).count:1|c|#env:prod")
        case 6: lines.append("cache.hits.region-\(shard).total:3|c|@0.5")
        default: lines.append("jobs.worker-\(host).run_time:87|ms|#env:prod,svc:web")
        }
    }
    return lines
}

/// Lines from `makeLines()`, each followed by `\n`, as many as fit in `limit` bytes.
func makeDatagram(limit: Int = 1400) -> (bytes: [UInt8], lines: Int) {
    var bytes: [UInt8] = []
    var count = 0
    for line in makeLines() {
        let utf8 = Array(line.utf8)
        guard bytes.count + utf8.count + 1 <= limit else { break }
        bytes += utf8
        bytes.append(UInt8(ascii: "\n"))
        count += 1
    }
    return (bytes, count)
}

/// The names (bytes before the first `:`) of the datagram's `count` lines, in one buffer.
func makeNames(count: Int) -> (bytes: [UInt8], ranges: [Range<Int>]) {
    var bytes: [UInt8] = []
    var ranges: [Range<Int>] = []
    for line in makeLines().prefix(count) {
        let name = Array(line.utf8.prefix { $0 != UInt8(ascii: ":") })
        ranges.append(bytes.count..<bytes.count + name.count)
        bytes += name
    }
    return (bytes, ranges)
}

let backendCount = 3
let packetBytes = 1400
let maxDatagramBytes = 8192 // the relay's default --max-datagram

// MARK: - Loops over non-copyable state
//
// Taking the assembler or processor `inout` here (rather than capturing the local `var` in a
// nested function) keeps exclusivity checks static: a captured var is boxed and each access
// would pay a dynamic check, which the relay's worker loop does not.

/// Appends `count` lines, cycling through `lines`, freeing every packet as soon as it is ready.
func appendLines(
    _ assembler: inout BatchAssembler, _ datagram: RawSpan, _ lines: [Range<Int>], _ backends: [Int], count: Int
) {
    var index = 0
    for _ in 0..<count {
        if !assembler.append(datagram.extracting(lines[index]), to: backends[index], now: 1) {
            fatalError("no free send slot")
        }
        while let slot = assembler.nextReady() {
            blackHole(assembler.completeSend(slot))
        }
        index = index + 1 == lines.count ? 0 : index + 1
    }
}

/// Relays `datagram` `count` times; each packet it closes is completed as sent in full.
func relayDatagrams(_ processor: inout DatagramProcessor, _ datagram: RawSpan, count: Int) {
    for _ in 0..<count {
        processor.relay(datagram: datagram, now: 1)
        while let slot = processor.assembler.nextReady() {
            let length = processor.assembler.pool.length(of: slot)
            _ = processor.sendCompleted(slot: slot, result: Int32(length))
        }
    }
}

/// Relays `count` datagrams of `pool`, cycling, each first copied into `buffer` as the kernel's
/// receive copies it into a provided buffer (so its bytes are as warm as the relay's are);
/// every packet closed is completed as sent in full. Returns where the cycle stopped.
func relayPool(
    _ processor: inout DatagramProcessor, _ pool: DatagramPool, _ buffer: UnsafeMutableRawBufferPointer,
    from start: Int, count: Int
) -> Int {
    var index = start
    pool.bytes.withUnsafeBytes { all in
        for _ in 0..<count {
            let datagram = UnsafeRawBufferPointer(rebasing: all[pool.offsets[index]..<pool.offsets[index + 1]])
            buffer.copyMemory(from: datagram)
            processor.relay(datagram: UnsafeRawBufferPointer(rebasing: buffer[..<datagram.count]).bytes, now: 1)
            while let slot = processor.assembler.nextReady() {
                let length = processor.assembler.pool.length(of: slot)
                _ = processor.sendCompleted(slot: slot, result: Int32(length))
            }
            index = index + 1 == pool.count ? 0 : index + 1
        }
    }
    return index
}

/// DogStatsD lines as an agent sends them: tagged metrics whose tags come in varying order,
/// multi-value distributions, container ids and timestamps, service checks and events, every
/// one valid under `--validate strict`, as many as fit a 1400-byte datagram.
func makeDogStatsDDatagram(limit: Int = 1400) -> (bytes: [UInt8], lines: Int) {
    var lines: [String] = []
    for index in 0..<64 {
        let host = index % 16
        switch index % 8 {
        case 0: lines.append("http.req:1|c|#env:prod,svc:web,host:h\(host)")
        case 1: lines.append("http.req:1|c|#host:h\(host),svc:web,env:prod")
        case 2: lines.append("http.latency:12.5|ms|@0.1|#svc:web,env:prod")
        case 3: lines.append("queue.depth:+3|g|#shard:\(index % 7)")
        case 4: lines.append("req.size:1.5:2:3|d|#az:b,env:prod|c:83c0a99c|T1656581400")
        case 5: lines.append("users.unique:u\(index)|s")
        case 6: lines.append("_sc|db.ping|0|#env:prod,role:primary|m:ok")
        default: lines.append("_e{6,9}:deploy|version \(index % 10)|p:low|#env:prod")
        }
    }
    var bytes: [UInt8] = []
    var count = 0
    for line in lines {
        let utf8 = Array(line.utf8)
        guard bytes.count + utf8.count + 1 <= limit else { break }
        bytes += utf8
        bytes.append(UInt8(ascii: "\n"))
        count += 1
    }
    return (bytes, count)
}

/// The benchmarks' backends as written, for the ring modes (whose points are named after them).
let ringBackends = (1...backendCount).map { BackendAddress(host: "10.0.0.\($0)", port: 8125) }

/// A processor over the benchmarks' backends in `hashMode`, or `nil` after reporting the error.
func makeProcessor(
    _ benchmark: Benchmark, hashMode: HashMode = .jump, validation: ValidationMode = .loose, hashKey: HashKeyMode = .name,
    rewrite: LineRewrite = LineRewrite(),
    mirror: MirrorPool? = nil
) -> DatagramProcessor? {
    let router = hashMode == .jump
        ? Router(backendCount: backendCount) : Router(backends: ringBackends, hashMode: hashMode)
    guard let processor = try? DatagramProcessor(
        router: router, packetBytes: packetBytes, maxDatagramBytes: maxDatagramBytes, validation: validation, hashKey: hashKey,
        rewrite: rewrite, mirror: mirror)
    else {
        benchmark.error("DatagramProcessor.init failed")
        return nil
    }
    return processor
}

/// A mirror pool of three backends (`--mirror`) in `hashMode`, sampling `rate` of the names.
func makeMirror(hashMode: HashMode, rate: Double) -> MirrorPool {
    let backends = (1...3).map { BackendAddress(host: "10.0.1.\($0)", port: 8125) }
    let addresses = (1...3).map { SocketAddress(numericHost: "10.0.1.\($0)", port: 8125)! }
    return MirrorPool(backends: backends, addresses: addresses, hashMode: hashMode, rate: rate)
}

/// Reports an error unless every line relayed was packed (no slot shortage, nothing malformed).
func checkEveryLinePacked(_ counters: RelayCounters, _ benchmark: Benchmark) {
    if counters[.linesForwarded] != counters[.linesReceived] || counters[.linesReceived] == 0 {
        benchmark.error("lines lost: \(counters[.linesReceived]) received, \(counters[.linesForwarded]) forwarded")
    }
}

// MARK: - Benchmarks

/// Set by scripts/alloc-gate.sh (`STATSRELAY_ALLOC_GATE=1`): count allocations only, over a
/// few measured iterations of each benchmark, so that the zero-allocation gate runs in seconds.
/// An allocation per line or per datagram shows in every iteration (a million lines, a
/// thousand datagrams), so a few iterations are enough to see it.
let allocationGateOnly = getenv("STATSRELAY_ALLOC_GATE") != nil

let benchmarks: @Sendable () -> Void = {
    // No .cpuTotal: on Linux the harness reads it from /proc/self/stat in 10 ms ticks (coarser
    // than one measured iteration) and allocates 16 times per sample doing so, which would hide
    // the code's own allocations. These loops are single-threaded: CPU time = wall time.
    let metrics: [BenchmarkMetric] =
        allocationGateOnly ? [.mallocCountTotal] : [.wallClock, .throughput, .mallocCountTotal]
    // Cheap operations (a few ns): a million per measured iteration.
    let perItem = Benchmark.Configuration(
        metrics: metrics, scalingFactor: .mega, maxDuration: allocationGateOnly ? .milliseconds(500) : .seconds(2),
        maxIterations: allocationGateOnly ? 10 : 200)
    // A whole datagram (about 1 µs): a thousand per measured iteration.
    let perDatagram = Benchmark.Configuration(
        metrics: metrics, scalingFactor: .kilo, maxDuration: allocationGateOnly ? .milliseconds(500) : .seconds(3),
        maxIterations: allocationGateOnly ? 20 : 2000)

    let (datagram, linesPerDatagram) = makeDatagram()
    let (names, nameRanges) = makeNames(count: linesPerDatagram)
    let hashes: [UInt64] = names.withUnsafeBytes { raw in
        nameRanges.map { FNV1a.hash64(raw.bytes.extracting($0)) }
    }
    // Every line of the datagram, without its `\n`, for the assembler on its own.
    var lineRanges: [Range<Int>] = []
    do {
        var offset = 0
        datagram.withUnsafeBytes { raw in
            while let line = LineScanner.next(in: raw.bytes, from: &offset) {
                if case .valid(let start, let end, _) = line { lineRanges.append(start..<end) }
            }
        }
    }
    precondition(lineRanges.count == linesPerDatagram, "every line of the workload must be valid")
    let lines = lineRanges

    // 1. Splitting and checking one line (per line; wraps to the datagram's start at its end).
    //    As the relay calls it: the datagram was checked for NUL bytes once, up front.
    Benchmark("LineScanner.next", configuration: perItem) { benchmark in
        datagram.withUnsafeBytes { raw in
            let span = raw.bytes
            let mayContainNul = span.contains(byte: 0)
            var offset = 0
            for _ in benchmark.scaledIterations {
                var line = LineScanner.next(in: span, from: &offset, mayContainNul: mayContainNul)
                if line == nil {
                    offset = 0
                    line = LineScanner.next(in: span, from: &offset, mayContainNul: mayContainNul)
                }
                blackHole(line)
            }
        }
    }

    // 2. Routing one metric name: its hash, the jump hash over 3 backends, and both together.
    Benchmark("FNV1a.hash64", configuration: perItem) { benchmark in
        names.withUnsafeBytes { raw in
            let span = raw.bytes
            var index = 0
            for _ in benchmark.scaledIterations {
                blackHole(FNV1a.hash64(span.extracting(nameRanges[index])))
                index = index + 1 == nameRanges.count ? 0 : index + 1
            }
        }
    }

    Benchmark("JumpHash.bucket", configuration: perItem) { benchmark in
        var index = 0
        for _ in benchmark.scaledIterations {
            blackHole(JumpHash.bucket(for: hashes[index], buckets: backendCount))
            index = index + 1 == hashes.count ? 0 : index + 1
        }
    }

    let router = Router(backendCount: backendCount)
    Benchmark("Router.route", configuration: perItem) { benchmark in
        names.withUnsafeBytes { raw in
            let span = raw.bytes
            var index = 0
            for _ in benchmark.scaledIterations {
                blackHole(router.route(key: span.extracting(nameRanges[index])))
                index = index + 1 == nameRanges.count ? 0 : index + 1
            }
        }
    }

    // The ring modes' per-name work when the cache misses: md5 of the name, then (in
    // Router.route) a binary search of the ring (120 points for etsy, 480 for ketama, over 3
    // backends) and the health check.
    Benchmark("MD5.leadingWord", configuration: perItem) { benchmark in
        names.withUnsafeBytes { raw in
            let span = raw.bytes
            var index = 0
            for _ in benchmark.scaledIterations {
                blackHole(MD5.leadingWord(span.extracting(nameRanges[index])))
                index = index + 1 == nameRanges.count ? 0 : index + 1
            }
        }
    }

    for mode in [HashMode.etsy, .ketama] {
        let ringRouter = Router(backends: ringBackends, hashMode: mode)
        Benchmark("Router.route (\(mode))", configuration: perItem) { benchmark in
            names.withUnsafeBytes { raw in
                let span = raw.bytes
                var index = 0
                for _ in benchmark.scaledIterations {
                    blackHole(ringRouter.route(key: span.extracting(nameRanges[index])))
                    index = index + 1 == nameRanges.count ? 0 : index + 1
                }
            }
        }
    }

    // What the relay does instead of the jump hash since it caches buckets per worker: a hit
    // in its two-way set-associative cache (the 36 names stay cached).
    Benchmark("PrimaryCache.primary", configuration: perItem) { benchmark in
        var cache = PrimaryCache(backendCount: backendCount)
        for hash in hashes { blackHole(cache.primary(forHash: hash)) }
        benchmark.startMeasurement()
        var index = 0
        for _ in benchmark.scaledIterations {
            blackHole(cache.primary(forHash: hashes[index]))
            index = index + 1 == hashes.count ? 0 : index + 1
        }
        benchmark.stopMeasurement()
    }

    // 3. Packing one line into its backend's batch; full batches are "sent" (freed) at once.
    Benchmark("BatchAssembler.append", configuration: perItem) { benchmark in
        let backends = hashes.map { JumpHash.bucket(for: $0, buckets: backendCount) }
        guard var assembler = try? BatchAssembler(
            backendCount: backendCount, packetBytes: packetBytes, maxLineBytes: maxDatagramBytes)
        else {
            benchmark.error("BatchAssembler.init failed")
            return
        }
        datagram.withUnsafeBytes { raw in
            // Warm up: every batch has been opened, filled and sent.
            appendLines(&assembler, raw.bytes, lines, backends, count: 10_000)
            benchmark.startMeasurement()
            appendLines(&assembler, raw.bytes, lines, backends, count: benchmark.scaledIterations.count)
            benchmark.stopMeasurement()
        }
    }

    // 4. One 1400-byte datagram of 36 lines: scan, route, pack; the packets it fills are sent
    //    (completed with their full length) at once. Steady state: must allocate nothing.
    //    Gated by Thresholds/UringRelayBenchmarks.DatagramProcessor.relay.p90.json (0 mallocs per
    //    1000 datagrams): `swift package --disable-sandbox benchmark thresholds check`.
    Benchmark("DatagramProcessor.relay", configuration: perDatagram) { benchmark in
        guard var processor = makeProcessor(benchmark) else { return }
        datagram.withUnsafeBytes { raw in
            relayDatagrams(&processor, raw.bytes, count: 1_000)
            benchmark.startMeasurement()
            relayDatagrams(&processor, raw.bytes, count: benchmark.scaledIterations.count)
            benchmark.stopMeasurement()
        }
        checkEveryLinePacked(processor.counters, benchmark)
    }

    // 5. The macro benchmark's W2 in miniature: 4096 different 1400-byte datagrams of the
    //    loadgen's compact mix (about 44 lines each, 10 000 metric names, seed 1), so names
    //    recur as they do in the drain run and the per-worker caches see a realistic spread.
    //    Each datagram is copied into one receive buffer first (included in the time).
    let mixPool = DatagramPool(
        catalog: MetricCatalog(count: 10_000, seed: 1, compact: true), mode: .packed, count: 4096, size: 1400, seed: 1)
    Benchmark("DatagramProcessor.relay (W2 mix, 10k names)", configuration: perDatagram) { benchmark in
        guard var processor = makeProcessor(benchmark) else { return }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 2048, alignment: 64)
        defer { buffer.deallocate() }
        var next = relayPool(&processor, mixPool, buffer, from: 0, count: 2 * mixPool.count)
        benchmark.startMeasurement()
        next = relayPool(&processor, mixPool, buffer, from: next, count: benchmark.scaledIterations.count)
        benchmark.stopMeasurement()
        blackHole(next)
        checkEveryLinePacked(processor.counters, benchmark)
    }

    // 6. The same in the ring modes (--hash etsy, --hash ketama): the cache answers repeats as
    //    under jump; each miss pays an md5 and a ring search instead of the jump hash.
    for mode in [HashMode.etsy, .ketama] {
        Benchmark("DatagramProcessor.relay (W2 mix, 10k names, \(mode))", configuration: perDatagram) { benchmark in
            guard var processor = makeProcessor(benchmark, hashMode: mode) else { return }
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 2048, alignment: 64)
            defer { buffer.deallocate() }
            var next = relayPool(&processor, mixPool, buffer, from: 0, count: 2 * mixPool.count)
            benchmark.startMeasurement()
            next = relayPool(&processor, mixPool, buffer, from: next, count: benchmark.scaledIterations.count)
            benchmark.stopMeasurement()
            blackHole(next)
            checkEveryLinePacked(processor.counters, benchmark)
        }
    }

    // 7. DogStatsD (issue 14): one 1400-byte datagram of tagged metrics, service checks and
    //    events, under each --validate and --hash-key pair (loose/name is today's path over
    //    DogStatsD lines; strict/name+tags checks every field and sorts every tag list). A
    //    figure divided by the datagram's line count is the cost per line. Gated at 0 mallocs
    //    (Thresholds/): the strict validator and the name+tags key allocate nothing.
    let (dogDatagram, dogLines) = makeDogStatsDDatagram()
    for (validation, hashKey, mode) in [
        (ValidationMode.loose, HashKeyMode.name, HashMode.jump), (.strict, .name, .jump), (.loose, .nameAndTags, .jump),
        (.strict, .nameAndTags, .jump), (.strict, .nameAndTags, .ketama),
    ] {
        let ring = mode == .jump ? "" : ", \(mode)"
        let label = "DatagramProcessor.relay (DogStatsD \(dogLines) lines, \(validation.rawValue), \(hashKey.rawValue)\(ring))"
        Benchmark(label, configuration: perDatagram) { benchmark in
            guard var processor = makeProcessor(benchmark, hashMode: mode, validation: validation, hashKey: hashKey) else { return }
            dogDatagram.withUnsafeBytes { raw in
                relayDatagrams(&processor, raw.bytes, count: 1_000)
                benchmark.startMeasurement()
                relayDatagrams(&processor, raw.bytes, count: benchmark.scaledIterations.count)
                benchmark.stopMeasurement()
            }
            checkEveryLinePacked(processor.counters, benchmark)
        }
    }

    // 8. Rewriting (--metrics-prefix, --metrics-tags): the 36-line datagram of benchmark 4 and
    //    the DogStatsD one of 7, each line prefixed (metrics), tagged (after its tags, or a new
    //    field) and copied once into its packet from its pieces. Compare with 4 and 7 (loose,
    //    name), which run the loop without rewriting code. Gated at 0 mallocs (Thresholds/).
    let rewrite = try! LineRewrite(prefix: "eu-west", tags: "dc:eu-west,relay")
    for (name, bytes) in [("36 lines", datagram), ("DogStatsD \(dogLines) lines", dogDatagram)] {
        for mode in [HashMode.jump, .ketama] {
            let ring = mode == .jump ? "" : ", \(mode)"
            Benchmark("DatagramProcessor.relay (rewrite, \(name)\(ring))", configuration: perDatagram) { benchmark in
                guard var processor = makeProcessor(benchmark, hashMode: mode, rewrite: rewrite) else { return }
                bytes.withUnsafeBytes { raw in
                    relayDatagrams(&processor, raw.bytes, count: 1_000)
                    benchmark.startMeasurement()
                    relayDatagrams(&processor, raw.bytes, count: benchmark.scaledIterations.count)
                    benchmark.stopMeasurement()
                }
                checkEveryLinePacked(processor.counters, benchmark)
            }
        }
    }

    // 9. The mirror pool (--mirror, issue 14): the W2 mix with a copy of every line (jump, rate
    //    1) or of a tenth of the names (ketama: an md5 per mirrored line), the mirror's packets
    //    completed as the primary's. Gated at 0 mallocs (Thresholds/). Compare with 5 (no
    //    mirror) for the copy's cost; 5 itself shows the no-mirror path's.
    for (mode, rate) in [(HashMode.jump, 1.0), (.ketama, 0.1)] {
        Benchmark("DatagramProcessor.relay (W2 mix, 10k names, mirror \(mode) \(rate))", configuration: perDatagram) { benchmark in
            guard var processor = makeProcessor(benchmark, mirror: makeMirror(hashMode: mode, rate: rate)) else { return }
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 2048, alignment: 64)
            defer { buffer.deallocate() }
            var next = relayPool(&processor, mixPool, buffer, from: 0, count: 2 * mixPool.count)
            benchmark.startMeasurement()
            next = relayPool(&processor, mixPool, buffer, from: next, count: benchmark.scaledIterations.count)
            benchmark.stopMeasurement()
            blackHole(next)
            checkEveryLinePacked(processor.counters, benchmark)
            if processor.counters[.mirrorLines] == 0 || processor.counters[.mirrorLinesDroppedNoSendBuffer] != 0 {
                benchmark.error("mirror: \(processor.counters[.mirrorLines]) copied, \(processor.counters[.mirrorLinesDroppedNoSendBuffer]) dropped")
            }
        }
    }
}
