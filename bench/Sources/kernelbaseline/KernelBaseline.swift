import ArgumentParser
import BenchKit
import Glibc

/// The bare kernel receive path: `recvmmsg(2)` into fixed buffers, counting datagrams and bytes only.
@main
struct KernelBaseline: ParsableCommand {
    /// The command's name and help text.
    static let configuration = CommandConfiguration(
        commandName: "kernelbaseline",
        abstract: "Receive UDP on one loopback port with recvmmsg(2) and count, parsing nothing.",
        discussion: """
            Stops on SIGINT/SIGTERM, after --expect-datagrams datagrams, --idle-exit seconds after the last \
            arrival, or after --max-seconds, and prints one JSON object on stdout with CLOCK_MONOTONIC arrival \
            timestamps and its own CPU seconds.
            """
    )

    @Option(help: "Address to listen on; must be inside 127.0.0.0/8.")
    var bind = "127.0.0.1"

    @Option(help: "UDP port; 0 picks an ephemeral one (printed on stderr and in the JSON).")
    var port: UInt16 = 8125

    @Option(help: "Receive buffer, bytes (set with SO_RCVBUFFORCE; the kernel doubles it).")
    var rcvbuf = 268_435_456

    @Option(help: "Datagrams per recvmmsg(2) call.")
    var batch = 64

    @Option(help: "Buffer per datagram, bytes.")
    var bufferSize = 2048

    @Option(help: "Exit once this many datagrams have arrived; 0 disables.")
    var expectDatagrams = 0

    @Option(help: "Exit this many seconds after the last arrival, once one arrived; 0 disables.")
    var idleExit: Double = 0

    @Option(help: "Hard bound on the run, seconds.")
    var maxSeconds: Double = 600

    /// Rejects option values outside their documented ranges before anything is opened.
    mutating func validate() throws {
        guard (1...1024).contains(batch) else { throw ValidationError("--batch must be within 1...1024") }
        guard (64...(1 << 20)).contains(bufferSize) else { throw ValidationError("--buffer-size must be within 64...1048576") }
        guard expectDatagrams >= 0 else { throw ValidationError("--expect-datagrams must be >= 0") }
        guard idleExit >= 0 && idleExit.isFinite else { throw ValidationError("--idle-exit must be >= 0") }
        guard maxSeconds > 0 && maxSeconds.isFinite else { throw ValidationError("--max-seconds must be positive") }
        guard rcvbuf > 0 else { throw ValidationError("--rcvbuf must be positive") }
    }

    /// Opens the sockets, receives until a stop condition holds and prints the JSON summary.
    func run() throws {
        let endpoint = try LoopbackEndpoint(address: LoopbackEndpoint.parseAddress(bind), port: port)
        let listener = try openListener(endpoint, receiveBuffer: rcvbuf)
        let boundPort = try UDPSocket.localPort(listener.fd)
        let signals = SignalWaiter()
        let control = ReceiverControl(target: expectDatagrams)
        let setup = ProcessUsage.current()
        let slot = ResultSlot<BaselineStats>()
        let (fd, batch, bufferSize) = (listener.fd, batch, bufferSize)
        let thread = try PosixThread {
            slot.store(receive(fd: fd, control: control, batch: batch, bufferSize: bufferSize))
        }
        printError("kernelbaseline: listening on \(LoopbackEndpoint.dotted(endpoint.address)):\(boundPort), rcvbuf \(listener.effective)")
        let start = monotonicNanoseconds()
        let reason = control.supervise(signals: signals, maxSeconds: maxSeconds, idleSeconds: idleExit)
        thread.join()
        let end = monotonicNanoseconds()
        let stats = slot.load() ?? BaselineStats()
        close(fd)
        var fields: [(String, JSONValue)] = [
            ("port", .int(Int(boundPort))),
            ("datagrams", .int(stats.datagrams)),
            ("bytes", .int(stats.bytes)),
            ("truncated", .int(stats.truncated)),
            ("recvmmsg_calls", .int(stats.calls)),
            ("first_arrival", jsonTimestamp(stats.firstArrival)),
            ("last_arrival", jsonTimestamp(stats.lastArrival)),
            ("socket_drops", stats.drops.map { .int($0) } ?? .null),
            ("stopped_by", .string(reason.rawValue)),
            ("expect_datagrams", .int(expectDatagrams)),
            ("rcvbuf", .int(listener.effective)),
            ("rcvbuf_forced", .bool(listener.forced)),
            ("start_monotonic", .double(seconds(start))),
            ("end_monotonic", .double(seconds(end))),
        ]
        fields += ProcessUsage.current().json
        fields.append(("cpu_seconds_setup", .double(setup.cpuSeconds)))
        if control.failure != 0 {
            fields.append(("error", .string(BenchError.system("recvmmsg", code: control.failure).description)))
        }
        printJSON(.object(fields))
        if reason == .error { throw ExitCode(2) }
    }
}

/// Counters of the baseline receiver.
struct BaselineStats: Sendable {
    /// Datagrams received.
    var datagrams = 0
    /// Payload bytes received.
    var bytes = 0
    /// Datagrams longer than the buffer.
    var truncated = 0
    /// `recvmmsg(2)` calls that returned datagrams.
    var calls = 0
    /// `monotonicNanoseconds()` when the first batch returned; 0 for none.
    var firstArrival: UInt64 = 0
    /// `monotonicNanoseconds()` when the last batch returned; 0 for none.
    var lastArrival: UInt64 = 0
    /// Kernel drops on the socket from `SO_MEMINFO`, when known.
    var drops: Int?
}

/// Receives on `fd` until `control` says stop, counting datagrams and bytes.
func receive(fd: Int32, control: ReceiverControl, batch: Int, bufferSize: Int) -> BaselineStats {
    let receiver = ReceiveBatch(count: batch, size: bufferSize)
    var stats = BaselineStats()
    while !control.shouldStop {
        let received = receiver.receive(from: fd)
        if received <= 0 {
            let code = Int32(-received)
            if received == 0 || code == EAGAIN || code == EWOULDBLOCK || code == EINTR { continue }
            control.fail(code: code)
            break
        }
        let now = monotonicNanoseconds()
        for index in 0..<received {
            stats.bytes += receiver.length(at: index)
            if receiver.isTruncated(at: index) { stats.truncated += 1 }
        }
        stats.datagrams += received
        stats.calls += 1
        if stats.firstArrival == 0 { stats.firstArrival = now }
        stats.lastArrival = now
        control.record(units: received, at: now)
    }
    stats.drops = UDPSocket.drops(fd)
    return stats
}
