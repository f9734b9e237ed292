import ArgumentParser
import BenchKit
import Glibc

/// Receives the relay's output on several loopback ports, checks every line and prints one JSON summary.
@main
struct BenchSink: ParsableCommand {
    /// The command's name and help text.
    static let configuration = CommandConfiguration(
        commandName: "benchsink",
        abstract: "Count and validate StatsD datagrams on loopback UDP ports with recvmmsg(2).",
        discussion: """
            One receiving thread per port. Stops on SIGINT/SIGTERM, when --expect-lines lines have arrived, \
            --idle-exit seconds after the last arrival, or after --max-seconds, and prints one JSON object on \
            stdout. Arrival timestamps are CLOCK_MONOTONIC seconds when this process read the datagram; \
            kernel_arrival timestamps are CLOCK_REALTIME seconds when the kernel queued it on the socket \
            (SO_TIMESTAMPNS), which stay right while this process is stopped or busy.
            """
    )

    @Option(help: "Address to listen on; must be inside 127.0.0.0/8.")
    var bind = "127.0.0.1"

    @Option(help: "Comma-separated UDP ports, one receiving thread each.")
    var ports = "9001,9002,9003"

    @Option(help: "Receive buffer per socket, bytes (set with SO_RCVBUFFORCE; the kernel doubles it).")
    var rcvbuf = 64 << 20

    @Option(help: "Datagrams per recvmmsg(2) call.")
    var batch = 64

    @Option(help: "Buffer per datagram, bytes; anything longer counts as truncated.")
    var bufferSize = 65_536

    @Option(help: "Exit once this many lines (valid or not) have arrived in total; 0 disables.")
    var expectLines = 0

    @Option(help: "Exit this many seconds after the last arrival, once one arrived; 0 disables.")
    var idleExit: Double = 0

    @Option(help: "Hard bound on the run, seconds.")
    var maxSeconds: Double = 600

    /// Rejects option values outside their documented ranges before anything is opened.
    mutating func validate() throws {
        guard (1...1024).contains(batch) else { throw ValidationError("--batch must be within 1...1024") }
        guard (64...(1 << 20)).contains(bufferSize) else { throw ValidationError("--buffer-size must be within 64...1048576") }
        guard expectLines >= 0 else { throw ValidationError("--expect-lines must be >= 0") }
        guard idleExit >= 0 && idleExit.isFinite else { throw ValidationError("--idle-exit must be >= 0") }
        guard maxSeconds > 0 && maxSeconds.isFinite else { throw ValidationError("--max-seconds must be positive") }
        guard rcvbuf > 0 else { throw ValidationError("--rcvbuf must be positive") }
    }

    /// Opens the sockets, receives until a stop condition holds and prints the JSON summary.
    func run() throws {
        let address = try LoopbackEndpoint.parseAddress(bind)
        let portList = try parsePortList(ports)
        var listeners: [(port: UInt16, fd: Int32)] = []
        var forced = true
        var effective = 0
        for port in portList {
            let listener = try openListener(LoopbackEndpoint(address: address, port: port), receiveBuffer: rcvbuf)
            try ReceiveBatch.enableArrivalTimestamps(on: listener.fd)
            listeners.append((port, listener.fd))
            forced = forced && listener.forced
            effective = listener.effective
        }
        let signals = SignalWaiter()
        let control = ReceiverControl(target: expectLines)
        let slots = listeners.map { _ in ResultSlot<PortStats>() }
        var threads: [PosixThread] = []
        for (listener, slot) in zip(listeners, slots) {
            let (fd, batch, bufferSize) = (listener.fd, batch, bufferSize)
            threads.append(try PosixThread {
                slot.store(receive(fd: fd, control: control, batch: batch, bufferSize: bufferSize))
            })
        }
        printError("benchsink: listening on \(LoopbackEndpoint.dotted(address)) ports \(ports), rcvbuf \(effective)")
        let start = monotonicNanoseconds()
        let reason = control.supervise(signals: signals, maxSeconds: maxSeconds, idleSeconds: idleExit)
        for thread in threads { thread.join() }
        let end = monotonicNanoseconds()

        var total = PortStats()
        var perPort: [(String, JSONValue)] = []
        for (listener, slot) in zip(listeners, slots) {
            let stats = slot.load() ?? PortStats()
            close(listener.fd)
            total.merge(stats)
            perPort.append((String(listener.port), stats.json))
        }
        var fields: [(String, JSONValue)] = [
            ("ports", .object(perPort)),
            ("totals", .object([
                ("datagrams", .int(total.datagrams)),
                ("lines", .int(total.tally.lines)),
                ("bytes", .int(total.bytes)),
            ])),
            ("malformed", .int(total.tally.malformed)),
            ("truncated", .int(total.truncated)),
            ("unterminated", .int(total.tally.unterminated)),
            ("empty_datagrams", .int(total.tally.empty)),
            ("line_checksum", .string(hexChecksum(total.tally.checksum))),
            ("first_arrival", jsonTimestamp(total.firstArrival)),
            ("last_arrival", jsonTimestamp(total.lastArrival)),
            ("last_kernel_arrival", jsonTimestamp(total.lastKernelArrival)),
            ("untimestamped", .int(total.untimestamped)),
            ("socket_drops", total.drops.map { .int($0) } ?? .null),
            ("stopped_by", .string(reason.rawValue)),
            ("expect_lines", .int(expectLines)),
            ("rcvbuf", .int(effective)),
            ("rcvbuf_forced", .bool(forced)),
            ("start_monotonic", .double(seconds(start))),
            ("end_monotonic", .double(seconds(end))),
        ]
        fields += ProcessUsage.current().json
        if control.failure != 0 {
            fields.append(("error", .string(BenchError.system("recvmmsg", code: control.failure).description)))
        }
        printJSON(.object(fields))
        if reason == .error { throw ExitCode(2) }
    }
}

/// Counters of one port, or of all ports merged.
struct PortStats: Sendable {
    /// Datagrams received.
    var datagrams = 0
    /// Payload bytes received.
    var bytes = 0
    /// Lines, malformed lines and checksum.
    var tally = LineTally()
    /// Datagrams longer than the receive buffer.
    var truncated = 0
    /// `monotonicNanoseconds()` when the first batch returned; 0 for none.
    var firstArrival: UInt64 = 0
    /// `monotonicNanoseconds()` when the last batch returned; 0 for none.
    var lastArrival: UInt64 = 0
    /// The latest kernel arrival timestamp (`CLOCK_REALTIME` nanoseconds); 0 for none.
    var lastKernelArrival: UInt64 = 0
    /// Datagrams that came without a kernel arrival timestamp.
    var untimestamped = 0
    /// Kernel drops on the socket from `SO_MEMINFO`, when known.
    var drops: Int?
    /// The first malformed line, cut to 120 bytes.
    var malformedSample: String?

    /// Adds `other` into these counters, keeping the earliest first and the latest last arrival.
    mutating func merge(_ other: PortStats) {
        datagrams += other.datagrams
        bytes += other.bytes
        tally.lines += other.tally.lines
        tally.malformed += other.tally.malformed
        tally.unterminated += other.tally.unterminated
        tally.empty += other.tally.empty
        tally.checksum &+= other.tally.checksum
        truncated += other.truncated
        if other.firstArrival != 0 && (firstArrival == 0 || other.firstArrival < firstArrival) {
            firstArrival = other.firstArrival
        }
        lastArrival = max(lastArrival, other.lastArrival)
        lastKernelArrival = max(lastKernelArrival, other.lastKernelArrival)
        untimestamped += other.untimestamped
        if let otherDrops = other.drops {
            drops = (drops ?? 0) + otherDrops
        }
        if malformedSample == nil {
            malformedSample = other.malformedSample
        }
    }

    /// The counters of one port as JSON.
    var json: JSONValue {
        .object([
            ("datagrams", .int(datagrams)),
            ("lines", .int(tally.lines)),
            ("bytes", .int(bytes)),
            ("malformed", .int(tally.malformed)),
            ("truncated", .int(truncated)),
            ("unterminated", .int(tally.unterminated)),
            ("line_checksum", .string(hexChecksum(tally.checksum))),
            ("first_arrival", jsonTimestamp(firstArrival)),
            ("last_arrival", jsonTimestamp(lastArrival)),
            ("last_kernel_arrival", jsonTimestamp(lastKernelArrival)),
            ("socket_drops", drops.map { .int($0) } ?? .null),
            ("malformed_sample", malformedSample.map { .string($0) } ?? .null),
        ])
    }
}

/// Receives on `fd` until `control` says stop, scanning every datagram.
func receive(fd: Int32, control: ReceiverControl, batch: Int, bufferSize: Int) -> PortStats {
    let receiver = ReceiveBatch(count: batch, size: bufferSize, timestamps: true)
    var stats = PortStats()
    while !control.shouldStop {
        let received = receiver.receive(from: fd)
        if received <= 0 {
            let code = Int32(-received)
            if received == 0 || code == EAGAIN || code == EWOULDBLOCK || code == EINTR { continue }
            control.fail(code: code)
            break
        }
        let now = monotonicNanoseconds()
        let linesBefore = stats.tally.lines
        for index in 0..<received {
            if receiver.isTruncated(at: index) { stats.truncated += 1 }
            let payload = receiver.payload(at: index)
            stats.bytes += payload.count
            let stamp = receiver.arrivalTimestamp(at: index)
            if stamp == 0 { stats.untimestamped += 1 }
            stats.lastKernelArrival = max(stats.lastKernelArrival, stamp)
            if let bad = stats.tally.scan(payload), stats.malformedSample == nil {
                stats.malformedSample = String(decoding: UnsafeRawBufferPointer(rebasing: bad.prefix(120)), as: UTF8.self)
            }
        }
        stats.datagrams += received
        if stats.firstArrival == 0 { stats.firstArrival = now }
        stats.lastArrival = now
        control.record(units: stats.tally.lines - linesBefore, at: now)
    }
    stats.drops = UDPSocket.drops(fd)
    return stats
}
