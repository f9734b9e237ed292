import ArgumentParser
import BenchKit
import CBenchShims
import Glibc

/// Sends a deterministic StatsD mix over UDP to a loopback target and prints one JSON summary.
@main
struct LoadGen: ParsableCommand {
    /// The command's name and help text.
    static let configuration = CommandConfiguration(
        commandName: "loadgen",
        abstract: "Send a seeded StatsD mix over UDP to a 127.0.0.0/8 target with sendmmsg(2).",
        discussion: """
            Stops after --count datagrams or --duration seconds, whichever comes first, and prints one \
            JSON object on stdout. All datagrams are built before the first send.
            """
    )

    @Option(help: "Target HOST:PORT; HOST must be inside 127.0.0.0/8.")
    var target = "127.0.0.1:8125"

    @Option(help: "Datagrams per second; 0 sends flat out.")
    var rate: Double = 0

    @Option(help: "Datagrams to send in total (required bound).")
    var count: Int

    @Option(help: "Hard time bound in seconds.")
    var duration: Double = 10

    @Option(help: "Distinct metric names.")
    var names = 10_000

    @Flag(help: "Shorter names of the same shapes: about 45 lines per 1400-byte datagram (issue 3's W2) instead of 36.")
    var compact = false

    @Option(help: "line: one line per datagram; packed: lines packed up to --size bytes.")
    var mode: PackingMode = .line

    @Option(help: "Datagram size limit in packed mode, bytes.")
    var size = 1400

    @Option(help: "Datagrams per sendmmsg(2) call.")
    var batch = 64

    @Option(help: "Connected sending sockets, used in turn per batch (distinct source ports spread the load over SO_REUSEPORT groups).")
    var sockets = 1

    @Option(help: "Distinct prebuilt datagrams, cycled through (default: min(count, 65536) in line mode, min(count, 8192) packed).")
    var pool: Int?

    @Option(help: "Seed of the generated mix.")
    var seed: UInt64 = 1

    @Flag(help: "Build the datagrams and print the totals a full --count send would produce, without sending.")
    var dryRun = false

    /// Rejects option values outside their documented ranges before anything is opened.
    mutating func validate() throws {
        guard count > 0 else { throw ValidationError("--count must be positive") }
        guard duration > 0 && duration.isFinite else { throw ValidationError("--duration must be positive") }
        guard rate >= 0 && rate.isFinite else { throw ValidationError("--rate must be >= 0") }
        guard names > 0 else { throw ValidationError("--names must be positive") }
        guard (64...65_507).contains(size) else { throw ValidationError("--size must be within 64...65507") }
        guard (1...1024).contains(batch) else { throw ValidationError("--batch must be within 1...1024") }
        guard (1...256).contains(sockets) else { throw ValidationError("--sockets must be within 1...256") }
        if let pool, pool <= 0 { throw ValidationError("--pool must be positive") }
        do {
            _ = try LoopbackEndpoint(parsing: target)
        } catch {
            throw ValidationError(error.description)
        }
    }

    /// Builds the datagrams, sends them until --count or --duration ends the run and prints the JSON summary.
    func run() throws {
        let endpoint = try LoopbackEndpoint(parsing: target)
        let poolSize = pool ?? min(count, mode == .line ? 65_536 : 8_192)
        let catalog = MetricCatalog(count: names, seed: seed, compact: compact)
        let datagrams = DatagramPool(catalog: catalog, mode: mode, count: poolSize, size: size, seed: seed)
        let config: [(String, JSONValue)] = [
            ("target", .string(endpoint.description)),
            ("mode", .string(mode.rawValue)),
            ("size", .int(size)),
            ("names", .int(names)),
            ("compact", .bool(compact)),
            ("seed", .uint(seed)),
            ("rate", .double(rate)),
            ("count", .int(count)),
            ("duration", .double(duration)),
            ("batch", .int(batch)),
            ("sockets", .int(sockets)),
            ("pool", .int(datagrams.count)),
        ]
        if dryRun {
            let totals = datagrams.totals(forDatagrams: count)
            printJSON(.object([
                ("dry_run", .bool(true)),
                ("datagrams_sent", .int(count)),
                ("lines_sent", .int(totals.lines)),
                ("bytes_sent", .int(totals.bytes)),
                ("line_checksum", .string(hexChecksum(totals.checksum))),
                ("config", .object(config)),
            ]))
            return
        }
        var sender = try Sender(pool: datagrams, endpoint: endpoint, sockets: sockets)
        let outcome = try sender.send(count: count, batch: batch, rate: rate, duration: duration)
        let elapsed = seconds(outcome.end - outcome.start)
        let errors = outcome.errors.sorted { $0.key < $1.key }.map { ($0.key, JSONValue.int($0.value)) }
        printJSON(.object([
            ("datagrams_sent", .int(outcome.datagrams)),
            ("lines_sent", .int(outcome.lines)),
            ("bytes_sent", .int(outcome.bytes)),
            ("seconds", .double(elapsed)),
            ("datagrams_per_s", .double(elapsed > 0 ? Double(outcome.datagrams) / elapsed : 0)),
            ("lines_per_s", .double(elapsed > 0 ? Double(outcome.lines) / elapsed : 0)),
            ("sendmmsg_calls", .int(outcome.calls)),
            ("sendmmsg_errors", .int(outcome.errors.values.reduce(0, +))),
            ("errors", .object(errors)),
            ("stopped_by", .string(outcome.datagrams >= count ? "count" : "duration")),
            ("line_checksum", .string(hexChecksum(outcome.checksum))),
            ("avg_lines_per_datagram", .double(Double(datagrams.linePrefix[datagrams.count]) / Double(datagrams.count))),
            ("start_monotonic", .double(seconds(outcome.start))),
            ("end_monotonic", .double(seconds(outcome.end))),
            ("config", .object(config)),
        ]))
    }
}

extension PackingMode: ExpressibleByArgument {}

/// What a send loop did.
struct SendOutcome {
    /// Datagrams the kernel accepted.
    var datagrams = 0
    /// Lines inside those datagrams.
    var lines = 0
    /// Payload bytes of those datagrams.
    var bytes = 0
    /// Wrapping sum of the line hashes of those datagrams.
    var checksum: UInt64 = 0
    /// `sendmmsg(2)` calls made, failed ones included.
    var calls = 0
    /// Failed calls by `errno` name.
    var errors: [String: Int] = [:]
    /// `monotonicNanoseconds()` before the first send.
    var start: UInt64 = 0
    /// `monotonicNanoseconds()` after the last send.
    var end: UInt64 = 0
}

/// The datagram pool copied into stable memory with one prebuilt message header per datagram, and the sockets.
struct Sender: ~Copyable {
    /// The pool the headers point into, for accounting.
    let pool: DatagramPool
    /// The concatenated datagrams at a fixed address.
    let storage: UnsafeMutableRawPointer
    /// One iovec per datagram.
    let vectors: UnsafeMutablePointer<iovec>
    /// One header per datagram; a batch is a contiguous slice of these.
    let headers: UnsafeMutablePointer<cbench_mmsghdr>
    /// The connected sockets.
    let descriptors: [Int32]

    /// Lays out `pool` for `sendmmsg(2)` and connects `sockets` sockets to `endpoint`.
    init(pool: DatagramPool, endpoint: LoopbackEndpoint, sockets: Int) throws(BenchError) {
        let storage = UnsafeMutableRawPointer.allocate(byteCount: max(pool.bytes.count, 1), alignment: 64)
        pool.bytes.withUnsafeBytes { storage.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        let vectors = UnsafeMutablePointer<iovec>.allocate(capacity: pool.count)
        let headers = UnsafeMutablePointer<cbench_mmsghdr>.allocate(capacity: pool.count)
        for index in 0..<pool.count {
            vectors[index] = iovec(
                iov_base: storage + pool.offsets[index],
                iov_len: pool.offsets[index + 1] - pool.offsets[index]
            )
            var header = cbench_mmsghdr()
            header.msg_hdr.msg_iov = vectors + index
            header.msg_hdr.msg_iovlen = 1
            headers[index] = header
        }
        var descriptors: [Int32] = []
        do {
            for _ in 0..<sockets {
                let fd = try UDPSocket.open()
                descriptors.append(fd)
                UDPSocket.setSendBuffer(fd, bytes: 4 << 20)
                try UDPSocket.connect(fd, to: endpoint)
            }
        } catch {
            for fd in descriptors { close(fd) }
            headers.deallocate()
            vectors.deallocate()
            storage.deallocate()
            throw error
        }
        self.pool = pool
        self.storage = storage
        self.vectors = vectors
        self.headers = headers
        self.descriptors = descriptors
    }

    deinit {
        for fd in descriptors { close(fd) }
        headers.deallocate()
        vectors.deallocate()
        storage.deallocate()
    }

    /// Sends `count` datagrams cycling over the pool, in batches of up to `batch`, paced to `rate` datagrams/s
    /// (0 for flat out), stopping early after `duration` seconds. `EAGAIN`, `ENOBUFS`, `EINTR` and
    /// `ECONNREFUSED` (a stale ICMP error on a connected socket) are counted and retried, so the totals are exact.
    mutating func send(count: Int, batch: Int, rate: Double, duration: Double) throws(BenchError) -> SendOutcome {
        var outcome = SendOutcome()
        var errorCodes: [Int32: Int] = [:]
        let limit = nanoseconds(duration)
        let interval = rate > 0 ? 1e9 / rate : 0
        var position = 0
        var socketIndex = 0
        outcome.start = monotonicNanoseconds()
        var now = outcome.start
        while outcome.datagrams < count {
            now = monotonicNanoseconds()
            let elapsed = now - outcome.start
            if elapsed >= limit { break }
            if rate > 0 {
                let due = UInt64(Double(outcome.datagrams) * interval)
                if due > elapsed {
                    sleep(nanoseconds: min(due - elapsed, limit - elapsed))
                    continue
                }
            }
            let wanted = min(batch, count - outcome.datagrams, pool.count - position)
            let sent = cbench_sendmmsg(descriptors[socketIndex], headers + position, UInt32(wanted), 0)
            outcome.calls += 1
            if sent < 0 {
                let code = errno
                switch code {
                case EAGAIN, EWOULDBLOCK, ENOBUFS, EINTR, ECONNREFUSED:
                    errorCodes[code, default: 0] += 1
                    if code != EINTR && code != ECONNREFUSED { sched_yield() }
                    continue
                default:
                    throw .system("sendmmsg", code: code)
                }
            }
            let next = position + Int(sent)
            outcome.lines += pool.linePrefix[next] - pool.linePrefix[position]
            outcome.bytes += pool.offsets[next] - pool.offsets[position]
            outcome.checksum &+= pool.checksumPrefix[next] &- pool.checksumPrefix[position]
            outcome.datagrams += Int(sent)
            position = next == pool.count ? 0 : next
            socketIndex = socketIndex + 1 == descriptors.count ? 0 : socketIndex + 1
        }
        outcome.end = monotonicNanoseconds()
        for (code, calls) in errorCodes {
            outcome.errors[errnoName(code), default: 0] += calls
        }
        return outcome
    }
}
