import RelayKernel
import Logging
import Synchronization

/// The relay's own key counters as StatsD lines, sent into the relayed stream every interval
/// (`--self-metrics-interval`, with `--prefix`, as the Go StatsRelay's `-prefix`), so they reach
/// the backends like any metric and are aggregated beside the traffic they describe.
///
/// The simplest honest path: a thread of its own sends them as UDP datagrams to the relay's own
/// listener, so they are received, parsed, counted and routed exactly like a client's lines
/// (and count in `lines_received` and `lines_forwarded` themselves, in the next report). Nothing
/// on the data path changes. The values are the workers' published counters (at most 100 ms
/// old, `CounterBoard`), so a report's deltas sum, over reports, to the counters as published.
///
/// The lines (`P` the prefix; `ID` a backend's identity with every character other than a
/// letter, a digit, `_` or `-` written `_`: `10.0.0.1:8125:a` → `10_0_0_1_8125_a`):
///
/// | line | kind | value |
/// |---|---|---|
/// | `P.datagrams_received` | `c` | datagrams received since the last report |
/// | `P.lines_received` | `c` | lines received |
/// | `P.lines_forwarded` | `c` | lines handed to a backend's batch |
/// | `P.lines_dropped` | `c` | lines dropped, every reason together (`statsrelay.lines_dropped.*`) |
/// | `P.datagrams_dropped_kernel` | `c` | datagrams the kernel dropped at a full socket |
/// | `P.backend.ID.lines_sent` | `c` | lines the backend was sent (confirmed sends) |
/// | `P.backend.ID.lines_dropped` | `c` | its lines dropped (`statsrelay.backend.lines_dropped.*`) |
/// | `P.backends_up` | `g` | backends up in the health view |
/// | `P.hold_in_use_bytes` | `g` | bytes held for down backends |
public final class SelfMetricsReporter: Sendable {
    private let relay: Relay
    private let prefix: String
    private let intervalNanoseconds: UInt64
    private let target: SocketAddress
    private let packetBytes: Int
    private let logger: Logger
    private let socket: SocketBox
    private let stopEvent: WakeupEvent
    private let stopping = Atomic<Bool>(false)
    private let thread = Mutex<WorkerThreadHandle?>(nil)
    /// The counters of the last report, whose deltas the next one sends.
    private let previous = Mutex<RelayCounters?>(nil)
    private let failedSends = Atomic<UInt64>(0)

    /// A reporter for `relay` (started: its listener is known), every `intervalNanoseconds`.
    ///
    /// - Parameters:
    ///   - target: where to send: the relay's own listener (see `target(for:)`).
    ///   - packetBytes: the largest datagram sent (lines are packed up to it).
    /// - Throws: `SystemCallError` when the sending socket or the stop event cannot be created.
    public init(
        relay: Relay, prefix: String, intervalNanoseconds: UInt64, target: SocketAddress, packetBytes: Int, logger: Logger
    ) throws(SystemCallError) {
        self.relay = relay
        self.prefix = prefix
        self.intervalNanoseconds = intervalNanoseconds
        self.target = target
        self.packetBytes = packetBytes
        self.logger = logger
        let unspecified = SocketAddress(numericHost: target.host.contains(":") ? "::" : "0.0.0.0", port: 0)!
        socket = SocketBox(try UDPSocket.bound(to: unspecified))
        do { stopEvent = try WakeupEvent() } catch { throw SystemCallError("eventfd", "self-metrics stop", error) }
    }

    /// Where the reporter of a relay listening on `listen` sends: the address itself, or the
    /// loopback address of its family when it listens on every address.
    public static func target(for listen: SocketAddress) -> SocketAddress {
        switch listen.host {
        case "0.0.0.0": SocketAddress(numericHost: "127.0.0.1", port: listen.port)!
        case "::": SocketAddress(numericHost: "::1", port: listen.port)!
        default: listen
        }
    }

    /// Datagrams whose sends failed (the relay's listener gone, a full socket buffer).
    public var sendFailures: UInt64 { failedSends.load(ordering: .relaxed) }

    /// Starts the reporting thread (unpinned: it is off the data path).
    public func start() throws(Errno) {
        let handle = WorkerThreadHandle(try WorkerThread(name: "statsrelay-self", cpu: nil) { [self] _ in run() })
        thread.withLock { $0 = handle }
    }

    /// Stops the thread and waits for it (a report in progress ends first).
    public func stop() {
        stopping.store(true, ordering: .releasing)
        stopEvent.signal()
        let handle = thread.withLock { $0 }
        handle?.join()
    }

    private func run() {
        var events = PollSet(descriptors: [PollSet.descriptor(of: stopEvent)])
        var next = MonotonicClock.nanoseconds() &+ intervalNanoseconds
        while !stopping.load(ordering: .acquiring) {
            let now = MonotonicClock.nanoseconds()
            if now < next {
                _ = try? events.wait(timeoutNanoseconds: next - now)
                continue
            }
            next = now &+ intervalNanoseconds
            reportNow()
        }
    }

    /// The relay's first listener as it is now (a reload may have moved or removed the one of the
    /// start), or the start's when the relay has none of the sending socket's family.
    private var currentTarget: SocketAddress {
        guard let first = relay.listenAddresses.first else { return target }
        let now = Self.target(for: first)
        return now.family == target.family ? now : target
    }

    /// Sends one report now: the deltas since the last report (or the relay's start), and the
    /// gauges. Called by the thread every interval; tests call it to control when.
    ///
    /// - Returns: the lines sent.
    @discardableResult
    public func reportNow() -> [String] {
        let current = relay.liveCounters()
        let before = previous.withLock { previous in
            defer { previous = current }
            return previous
        }
        let up = relay.monitor.status.filter { $0.state == .up }.count
        let lines = Self.lines(prefix: prefix, previous: before, current: current, backendsUp: up, holdInUseBytes: relay.holdBytesInUse)
        let target = currentTarget
        for datagram in Self.datagrams(lines, packetBytes: packetBytes) {
            do throws(Errno) { try socket.socket.send(datagram, to: target) } catch {
                if failedSends.add(1, ordering: .relaxed).newValue == 1 {
                    logger.warning("self-metrics could not be sent to the relay's listener", metadata: [
                        "target": "\(target)", "error": "\(error)",
                    ])
                }
            }
        }
        return lines
    }

    /// The report's lines for counters going from `previous` (`nil`: the relay's start) to
    /// `current`, in the order of the table above, backends in `current`'s order (those that
    /// left the pool last).
    public static func lines(
        prefix: String, previous: RelayCounters?, current: RelayCounters, backendsUp: Int, holdInUseBytes: Int
    ) -> [String] {
        func delta(_ now: UInt64, _ then: UInt64?) -> UInt64 { now >= (then ?? 0) ? now - (then ?? 0) : 0 }
        func dropped(_ counters: RelayCounters) -> UInt64 {
            RelayCounter.allCases.filter { $0.name.hasPrefix("statsrelay.lines_dropped.") }.reduce(0) { $0 &+ counters[$1] }
        }
        let droppedColumns = BackendCounter.allCases.filter { $0.name.hasPrefix("statsrelay.backend.lines_dropped.") }
        func backendDropped(_ counters: RelayCounters, _ identity: String) -> UInt64 {
            droppedColumns.reduce(0) { sum, column in sum &+ (counters.values(of: column).first { $0.backend == identity }?.value ?? 0) }
        }
        func sent(_ counters: RelayCounters, _ identity: String) -> UInt64? {
            counters.values(of: .linesSent).first { $0.backend == identity }?.value
        }
        var lines = [
            "\(prefix).datagrams_received:\(delta(current[.datagramsReceived], previous?[.datagramsReceived]))|c",
            "\(prefix).lines_received:\(delta(current[.linesReceived], previous?[.linesReceived]))|c",
            "\(prefix).lines_forwarded:\(delta(current[.linesForwarded], previous?[.linesForwarded]))|c",
            "\(prefix).lines_dropped:\(delta(dropped(current), previous.map(dropped)))|c",
            "\(prefix).datagrams_dropped_kernel:\(delta(current[.datagramsDroppedKernel], previous?[.datagramsDroppedKernel]))|c",
        ]
        for identity in current.countedBackends {
            let name = "\(prefix).backend.\(metricSegment(identity))"
            lines.append("\(name).lines_sent:\(delta(sent(current, identity) ?? 0, previous.flatMap { sent($0, identity) }))|c")
            lines.append("\(name).lines_dropped:\(delta(backendDropped(current, identity), previous.map { backendDropped($0, identity) }))|c")
        }
        lines.append("\(prefix).backends_up:\(backendsUp)|g")
        lines.append("\(prefix).hold_in_use_bytes:\(holdInUseBytes)|g")
        return lines
    }

    /// `text` as one segment of a metric name: every character other than an ASCII letter, a
    /// digit, `_` or `-` as `_` (a `.` would add a level, a `:` end the name).
    public static func metricSegment(_ text: String) -> String {
        String(text.unicodeScalars.map { scalar -> Character in
            let ok = scalar.isASCII && (scalar.properties.isAlphabetic || ("0"..."9").contains(scalar) || scalar == "_" || scalar == "-")
            return ok ? Character(scalar) : "_"
        })
    }

    /// `lines` packed into datagrams of at most `packetBytes` (each line ends in `\n`; a line
    /// longer than that goes alone).
    public static func datagrams(_ lines: [String], packetBytes: Int) -> [[UInt8]] {
        var datagrams: [[UInt8]] = []
        var current: [UInt8] = []
        for line in lines {
            let bytes = Array((line + "\n").utf8)
            if !current.isEmpty && current.count + bytes.count > packetBytes {
                datagrams.append(current)
                current = []
            }
            current += bytes
        }
        if !current.isEmpty { datagrams.append(current) }
        return datagrams
    }
}
