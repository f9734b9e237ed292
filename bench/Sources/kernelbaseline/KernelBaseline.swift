import ArgumentParser
import BenchKit
import CBenchUring
import Glibc

/// How the baseline receives.
enum ReceiveMode: String, ExpressibleByArgument, CaseIterable, Sendable {
    /// `recvmmsg(2)` into fixed buffers, `--batch` at a time (the portable driver's receive).
    case recvmmsg
    /// One multishot io_uring `recv` on a provided-buffer ring, waiting for `--uring-wait`
    /// completions (the io_uring driver's receive).
    case uringRecv = "uring-recv"
}

/// The bare kernel receive path: `recvmmsg(2)` into fixed buffers, or a multishot io_uring `recv`
/// into provided buffers, counting datagrams and bytes only.
@main
struct KernelBaseline: ParsableCommand {
    /// The command's name and help text.
    static let configuration = CommandConfiguration(
        commandName: "kernelbaseline",
        abstract: "Receive UDP on one loopback port with recvmmsg(2) or io_uring and count, parsing nothing.",
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

    @Option(help: "recvmmsg: recvmmsg(2) with --batch; uring-recv: a multishot io_uring recv (MSG_TRUNC) on --uring-buffers provided buffers, ring flags SINGLE_ISSUER|DEFER_TASKRUN, waiting for --uring-wait completions or --uring-timeout-us.")
    var mode = ReceiveMode.recvmmsg

    @Option(help: "Datagrams per recvmmsg(2) call.")
    var batch = 64

    @Option(help: "uring-recv: provided buffers, a power of two (the relay's default: 128).")
    var uringBuffers = 128

    @Option(help: "uring-recv: completions one wait asks for (the relay's: 32).")
    var uringWait = 32

    @Option(help: "uring-recv: longest wait, microseconds.")
    var uringTimeoutUs = 1000

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
        guard (1...32768).contains(uringBuffers) && uringBuffers & (uringBuffers - 1) == 0 else {
            throw ValidationError("--uring-buffers must be a power of two within 1...32768")
        }
        guard (1...4096).contains(uringWait) else { throw ValidationError("--uring-wait must be within 1...4096") }
        guard (1...10_000_000).contains(uringTimeoutUs) else { throw ValidationError("--uring-timeout-us must be within 1...10000000") }
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
        let (fd, batch, bufferSize, mode) = (listener.fd, batch, bufferSize, mode)
        let uring = UringSettings(buffers: uringBuffers, wait: uringWait, timeoutNanoseconds: Int64(uringTimeoutUs) * 1000)
        let thread = try PosixThread {
            switch mode {
            case .recvmmsg: slot.store(receive(fd: fd, control: control, batch: batch, bufferSize: bufferSize))
            case .uringRecv: slot.store(receiveUring(fd: fd, control: control, bufferSize: bufferSize, settings: uring))
            }
        }
        printError("kernelbaseline: listening on \(LoopbackEndpoint.dotted(endpoint.address)):\(boundPort), rcvbuf \(listener.effective), mode \(mode.rawValue)")
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
            ("mode", .string(mode.rawValue)),
            ("recvmmsg_calls", .int(mode == .recvmmsg ? stats.calls : 0)),
            ("uring_waits", .int(mode == .uringRecv ? stats.calls : 0)),
            ("uring_rearms", .int(stats.rearms)),
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
            let call = mode == .recvmmsg ? "recvmmsg" : "io_uring"
            fields.append(("error", .string(BenchError.system(call, code: control.failure).description)))
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
    /// `recvmmsg(2)` calls, or io_uring waits, that returned datagrams.
    var calls = 0
    /// Times the multishot receive ended and was armed again (`uring-recv`).
    var rearms = 0
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

/// The io_uring receive loop's settings.
struct UringSettings: Sendable {
    /// Provided buffers.
    var buffers: Int
    /// Completions one wait asks for.
    var wait: Int
    /// Longest wait.
    var timeoutNanoseconds: Int64
}

/// Receives on `fd` with a multishot io_uring `recv` until `control` says stop, counting
/// datagrams and bytes as `receive(fd:control:batch:bufferSize:)` does.
func receiveUring(fd: Int32, control: ReceiverControl, bufferSize: Int, settings: UringSettings) -> BaselineStats {
    var stats = BaselineStats()
    var error: Int32 = 0
    guard let receiver = cbench_uring_open(fd, UInt32(settings.buffers), UInt32(bufferSize), 64, &error) else {
        control.fail(code: error)
        return stats
    }
    defer { cbench_uring_close(receiver) }
    var batch = cbench_uring_batch()
    while !control.shouldStop {
        let result = cbench_uring_receive(receiver, UInt32(settings.wait), settings.timeoutNanoseconds, &batch)
        if result < 0 {
            control.fail(code: -result)
            break
        }
        stats.rearms += Int(batch.rearms)
        guard batch.datagrams > 0 else { continue }
        let now = monotonicNanoseconds()
        stats.datagrams += Int(batch.datagrams)
        stats.bytes += Int(batch.bytes)
        stats.truncated += Int(batch.truncated)
        stats.calls += 1
        if stats.firstArrival == 0 { stats.firstArrival = now }
        stats.lastArrival = now
        control.record(units: Int(batch.datagrams), at: now)
    }
    stats.drops = UDPSocket.drops(fd)
    return stats
}
