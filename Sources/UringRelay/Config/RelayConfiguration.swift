import Logging
import RelayKernel

/// Everything a relay needs to start, validated before any socket is opened: what the command
/// line's flags and the configuration file's keys (`ConfigFile`) hold, one field per key.
///
/// Defaults match the Go StatsRelay where it has the setting (port 8125, 1400-byte packets).
/// These defaults are the only ones: the command line and the file set only what they name.
public struct RelayConfiguration: Sendable, Equatable {
    /// The address to listen on (`--bind`).
    public var bindHost: String = "0.0.0.0"
    /// The UDP port to listen on (`--port`); 0 lets the kernel choose (tests).
    public var port: UInt16 = 8125
    /// The UDP listeners after the first (`bindHost`:`port`): the file's `listeners` from its
    /// second entry on, or `--listen` given more than once. Every worker opens one
    /// `SO_REUSEPORT` socket on each.
    public var additionalListeners: [SocketAddress] = []
    /// The file mode of each Unix datagram listener (of `additionalListeners`), by path;
    /// `defaultUnixSocketMode` for one not named (`--unix-socket-mode`, a listener's `mode`).
    public var unixSocketModes: [String: UInt32] = [:]
    /// `--tcp-port`: a TCP ingest listener on `bindHost` at this port (`nil`: none).
    public var tcpPort: UInt16?
    /// Where the `--tcp-port` listener stays when a reload moved `bindHost` (`nil`: on
    /// `bindHost`): `tcp-port` needs a restart, so its listener keeps the address it started on.
    public var tcpPortHost: String?
    /// The other TCP ingest listeners (the file's `tcp:ADDR:PORT` listeners), in order.
    public var tcpListeners: [SocketAddress] = []
    /// `--tcp-max-connections`: open TCP ingest connections, relay-wide (split over workers).
    public var tcpMaxConnections = RelayConfiguration.defaultTCPMaxConnections
    /// `--tcp-idle-timeout`: a TCP ingest connection that sends nothing this long is closed.
    public var tcpIdleTimeoutNanoseconds = RelayConfiguration.defaultTCPIdleTimeoutNanoseconds
    /// How the io_uring driver reads TCP ingest connections (`TCPReceiveMode`; no flag: the
    /// benchmark's switch, `STATSRELAY_TCP_RECEIVE`).
    public var tcpReceive = TCPReceiveMode.fromEnvironment
    /// Buffers in each io_uring worker's TCP receive group (a power of two, 1-32768).
    public var tcpReceiveBuffers = RelayConfiguration.defaultTCPReceiveBuffers
    /// The bytes of each buffer of the TCP receive group.
    public var tcpReceiveBufferBytes = RelayConfiguration.defaultTCPReceiveBufferBytes
    /// The backends, in routing order.
    public var backends: [BackendAddress]
    /// The largest outgoing datagram (`--packet-len`), unless a single line is longer.
    public var packetBytes: Int = 1400
    /// The longest a line waits in a batch (`--flush-interval`).
    public var flushIntervalNanoseconds: UInt64 = 10_000_000
    /// The requested socket receive buffer (`--rcvbuf`).
    public var receiveBufferBytes: Int = 8 << 20
    /// The largest datagram received whole (`--max-datagram`); larger ones are dropped.
    public var maxDatagramBytes: Int = 8192
    /// How many workers run (`--threads`).
    public var threads: Int = 1
    /// The CPUs workers are pinned to, in order (`--cpus`); `nil` pins worker i to the i-th
    /// allowed CPU.
    public var cpus: [Int]?
    /// Receive buffers per worker in the provided-buffer ring. The kernel takes them in ring
    /// order, so every buffer is touched once per cycle: few buffers keep the cycle in cache
    /// (128 against 512: +13% lines/s on the W2 drain). They only need to cover one loop
    /// turn's datagrams; the socket's receive buffer holds the rest while they are in use.
    /// 256, so that the adapted minimum wait may gather 128 datagrams a wake-up
    /// (`AdaptiveMinimumWait.largestTarget`: half the buffers at most).
    public var receiveBuffers: Int = 256
    /// How long, from its start, a worker's wait gathers completions before the first one ends
    /// it (`io_uring_enter2` minimum wait). Each wake-up costs ~15-20 µs of CPU here, and with
    /// DEFER_TASKRUN the datagrams that arrive meanwhile wait in the socket and are taken in one
    /// go: 250 µs against 100 µs cuts CPU per line by a third for one-line datagrams at
    /// 200-400 k/s (12% for packed ones) and leaves the drain rate unchanged. A wait's arrivals
    /// must fit in the socket buffer. The shortest minimum wait: below 128 datagrams a wait the
    /// io_uring driver lengthens it up to eight times this (`AdaptiveMinimumWait`).
    public var minimumWaitMicroseconds: UInt32 = 250

    /// Whether this relay may share its port with other processes' `SO_REUSEPORT` sockets
    /// (`--reuseport-group`). Off: start-up refuses a port another socket already holds, since
    /// the kernel would silently split the traffic between them.
    public var reusePortGroup = false

    /// How each listener's datagrams are spread over the workers (`--reuseport-steering`).
    public var reusePortSteering: ReusePortSteering = .hash

    /// Which I/O driver runs (`--io-backend`).
    public var ioBackend: IOBackendChoice = .auto

    /// How backends are checked (`--health-check`).
    public var healthCheck: HealthCheckMode = .none
    /// The port checked, if not the mode's default (`--health-check-port`).
    public var healthCheckPort: UInt16?
    /// Time between checks (`--health-interval`).
    public var healthIntervalNanoseconds: UInt64 = 1_000_000_000
    /// The longest one check may take (`--health-timeout`).
    public var healthTimeoutNanoseconds: UInt64 = 500_000_000
    /// Consecutive successes that bring a backend up (`--health-rise`).
    public var healthRise = 2
    /// Consecutive failures that take a backend down (`--health-fall`).
    public var healthFall = 3
    /// The hold-down of a backend's first flap (`--flap-hold`; 0 turns flap damping off): a
    /// backend that goes down again within `flapHoldMaxNanoseconds` of coming up stays down at
    /// least this long, doubled at each further flap (`HealthTracker`). 30 s keeps a backend
    /// flapping every second down for most of a minute after its second down, where without it
    /// its names would move twice a second.
    public var flapHoldNanoseconds: UInt64 = 30_000_000_000
    /// The longest hold-down, and how long a backend must stay up for its flaps to be forgotten
    /// (`--flap-hold-max`).
    public var flapHoldMaxNanoseconds: UInt64 = 600_000_000_000
    /// How metric names are spread over the backends (`--hash`).
    public var hashMode: HashMode = .jump
    /// How lines are checked before they are routed (`--validate`).
    public var validation: ValidationMode = .loose
    /// What routes a line (`--hash-key`).
    public var hashKey: HashKeyMode = .name
    /// What is written around every relayed line (`--metrics-prefix`, `--metrics-tags`).
    public var rewrite = LineRewrite()
    /// The mirror pool's backends (`--mirror`), in its routing order; empty: no mirror.
    public var mirror: [BackendAddress] = []
    /// How metric names are spread over the mirror's backends (`--mirror-hash`).
    public var mirrorHashMode: HashMode = .jump
    /// The share of metric names (routing keys) mirrored (`--mirror-sample`), in (0, 1].
    public var mirrorSample = 1.0
    /// What happens to a down backend's metrics (`--on-backend-down`).
    public var onBackendDown: DownPolicy = .rehash
    /// Bytes of batches held under `hold` for the whole relay, every backend and worker together
    /// (`--hold-bytes`). 64 MiB keeps about a minute of a busy backend's traffic (1 MB/s: ~30k
    /// lines/s), enough for a restart or deploy, at a cost no host notices; it is reserved in
    /// chunks as packets are held and returned as they drain, so a healthy relay holds nothing.
    public var holdBytes = 64 << 20
    /// Bytes per second replayed to a recovering backend, for the whole relay (`--replay-rate`).
    /// Live lines queue behind the replay, so this bounds everything the backend receives until
    /// its queue drains. 1 MiB/s is ~750 full packets or 20-30k lines a second, within what a
    /// recovering etsy statsd (one Node.js thread) takes, and a 208 KiB socket buffer (~90
    /// packets) gives it over 100 ms of slack at that rate.
    public var replayBytesPerSecond = 1 << 20
    /// How often backends given by name are resolved again (`--dns-refresh`).
    public var dnsRefreshNanoseconds: UInt64 = 30_000_000_000

    /// How long a stop may take (`--shutdown-timeout`): two thirds for receiving what is still
    /// arriving, the rest for the final sends.
    public var shutdownTimeoutNanoseconds: UInt64 = 900_000_000

    /// How long the relay keeps relaying after `SIGTERM` with `/healthz` already 503 `stopping`
    /// (`--stop-delay`), so a load balancer takes it out of its pool before the drain begins.
    /// 0: the drain begins at once.
    public var stopDelayNanoseconds: UInt64 = 0

    /// How often the relay's own counters are sent into the relayed stream as StatsD lines
    /// (`--self-metrics-interval`; `SelfMetricsReporter`); 0 (the default): never.
    public var selfMetricsIntervalNanoseconds: UInt64 = 0
    /// The first segment of those lines' names (`--prefix`, as the Go StatsRelay's `-prefix`).
    public var selfMetricsPrefix = "statsrelay"

    /// The admin endpoint's address, `ADDR:PORT` or `none` (`--admin`; see `AdminAddress`).
    public var admin: String = AdminAddress.defaultSpec
    /// The control socket's path (`--control-socket`; `ControlServer`), or `nil` for none.
    public var controlSocket: String?
    /// The lowest level logged (`--log-level`).
    public var logLevel: Logger.Level = .info
    /// How log events are written (`--log-format`): swift-log's text line, or one JSON object per line.
    public var logFormat: RelayLogHandler.Format = .text
    /// `SO_SNDBUF` requested for each backend socket: room for bursts without `EAGAIN`. No flag
    /// sets it; tests shrink it to put sends under send-buffer pressure.
    public var backendSendBufferBytes = 4 << 20
    /// The transport of backends written without a scheme (`--sendproto`, the Go StatsRelay's
    /// `-sendproto`): UDP unless told.
    public var sendProtocol: BackendTransport = .udp
    /// Per TCP backend and worker, the most bytes held for it and not yet acknowledged by its
    /// kernel (queued while connecting or blocked, or written and unacknowledged)
    /// (`--tcp-backend-queue`); beyond it a packet is dropped and counted.
    public var tcpBackendQueueBytes = RelayConfiguration.defaultTCPBackendQueueBytes
    /// `--tcp-backend-queue`'s default: 4 MiB, a second of a 30 000 lines/s backend's lines
    /// at ~130 bytes a line, per worker.
    public static let defaultTCPBackendQueueBytes = 4 << 20

    /// A configuration with defaults for everything but the backends.
    public init(backends: [BackendAddress]) {
        self.backends = backends
    }

    /// The mode a Unix datagram listener's file gets unless told otherwise: its owner and group
    /// may send.
    public static let defaultUnixSocketMode: UInt32 = 0o660

    /// The file mode of the Unix datagram listener at `path`.
    public func unixSocketMode(for path: String) -> UInt32 { unixSocketModes[path] ?? Self.defaultUnixSocketMode }

    /// Every UDP listener, in listener-id order: `bindHost`:`port`, then `additionalListeners`.
    public var listenAddresses: [SocketAddress] {
        [SocketAddress(numericHost: bindHost, port: port) ?? SocketAddress(numericHost: "0.0.0.0", port: port)!] + additionalListeners
    }

    /// Checks every setting and names the first bad one.
    public func validate() throws(ConfigurationError) {
        if backends.isEmpty {
            throw ConfigurationError(argument: "backends", value: "", reason: "at least one backend HOST:PORT is required")
        }
        // One host and port twice (whatever the instance labels, and whatever the transports:
        // a statsd takes UDP and TCP on one port) would give one statsd two slots of the hash
        // ring, and no relay with the list written once would agree with it.
        // Spellings of one address that only a lookup reveals (`127.1`, `localhost`) are caught
        // once resolved (`BackendAddressCheck`); numeric ones are compared canonical here.
        var seen: [String: Int] = [:]
        for (index, backend) in backends.enumerated() {
            let key = SocketAddress(numericHost: backend.host, port: backend.port)?.canonical.description
                ?? "\(backend.host.lowercased()):\(backend.port)"
            if let first = seen[key] {
                throw ConfigurationError(
                    argument: "backend", value: backend.withScheme,
                    reason: "same host and port as backend \(first + 1) ('\(backends[first].withScheme)'): give each backend once")
            }
            seen[key] = index
        }
        try hashMode.check(backends)
        try validateMirror()
        try validateTCPIngest()
        if SocketAddress(numericHost: bindHost, port: port) == nil {
            throw ConfigurationError(argument: "--bind", value: bindHost, reason: "not an IPv4 or IPv6 address")
        }
        // Two sockets of one worker on one address would split its traffic between them for
        // nothing (and two wildcard ports cannot both be told apart in the labels).
        let addresses = listenAddresses
        for (index, address) in addresses.enumerated() where address.port != 0 {
            if let first = addresses[..<index].firstIndex(where: { $0.canonical == address.canonical }) {
                throw ConfigurationError(
                    argument: "listeners[\(index)]", value: address.description,
                    reason: "same address as listeners[\(first)]: give each listener once")
            }
        }
        for (index, address) in addresses.enumerated() where address.family == .unix {
            if let first = addresses[..<index].firstIndex(of: address) {
                throw ConfigurationError(
                    argument: "listeners[\(index)]", value: address.description,
                    reason: "same path as listeners[\(first)]: give each listener once")
            }
        }
        if let controlSocket, let index = addresses.firstIndex(where: { $0.unixPath == controlSocket }) {
            throw ConfigurationError(
                argument: "--control-socket", value: controlSocket,
                reason: "the path of listeners[\(index)], a unixgram listener: give the control socket a path of its own")
        }
        if !(2...BatchAssembler.largestDatagramBytes).contains(packetBytes) {
            throw ConfigurationError(
                argument: "--packet-len", value: "\(packetBytes)", reason: "must be 2-\(BatchAssembler.largestDatagramBytes) bytes")
        }
        if !(1...65_535).contains(maxDatagramBytes) {
            throw ConfigurationError(argument: "--max-datagram", value: "\(maxDatagramBytes)", reason: "must be 1-65535 bytes")
        }
        if !Self.flushIntervalLimits.contains(flushIntervalNanoseconds) {
            throw ConfigurationError(
                argument: "--flush-interval", value: DurationParser.format(flushIntervalNanoseconds),
                reason: DurationParser.describe(Self.flushIntervalLimits))
        }
        if !Self.minimumWaitLimits.contains(UInt64(minimumWaitMicroseconds) * 1_000) {
            throw ConfigurationError(
                argument: "--min-wait", value: "\(minimumWaitMicroseconds)us", reason: DurationParser.describe(Self.minimumWaitLimits))
        }
        if !Self.receiveBufferLimits.contains(receiveBufferBytes) {
            throw ConfigurationError(
                argument: "--rcvbuf", value: ByteSizeParser.format(receiveBufferBytes),
                reason: ByteSizeParser.describe(Self.receiveBufferLimits))
        }
        if !(1...256).contains(threads) {
            throw ConfigurationError(argument: "--threads", value: "\(threads)", reason: "must be 1-256")
        }
        if reusePortSteering != .hash && reusePortGroup {
            throw ConfigurationError(
                argument: "--reuseport-steering", value: reusePortSteering.rawValue,
                reason: "cannot be used with --reuseport-group: it steers over this relay's workers only, and would starve or overrun the other processes' sockets in the group")
        }
        if let cpus, cpus.count < threads {
            throw ConfigurationError(
                argument: "--cpus", value: cpus.map(String.init).joined(separator: ","),
                reason: "lists \(cpus.count) CPUs for \(threads) threads")
        }
        if receiveBuffers < 1 || receiveBuffers > 32_768 || receiveBuffers & (receiveBuffers - 1) != 0 {
            throw ConfigurationError(
                argument: "--receive-buffers", value: "\(receiveBuffers)", reason: "must be a power of two from 1 to 32768")
        }
        if !Self.healthIntervalLimits.contains(healthIntervalNanoseconds) {
            throw ConfigurationError(
                argument: "--health-interval", value: DurationParser.format(healthIntervalNanoseconds),
                reason: DurationParser.describe(Self.healthIntervalLimits))
        }
        if healthTimeoutNanoseconds < Self.healthTimeoutLimits.lowerBound || healthTimeoutNanoseconds > healthIntervalNanoseconds {
            throw ConfigurationError(
                argument: "--health-timeout", value: DurationParser.format(healthTimeoutNanoseconds),
                reason: "must be between \(DurationParser.format(Self.healthTimeoutLimits.lowerBound)) and "
                    + "--health-interval (\(DurationParser.format(healthIntervalNanoseconds)))")
        }
        if !(1...100).contains(healthRise) {
            throw ConfigurationError(argument: "--health-rise", value: "\(healthRise)", reason: "must be 1-100")
        }
        if !(1...100).contains(healthFall) {
            throw ConfigurationError(argument: "--health-fall", value: "\(healthFall)", reason: "must be 1-100")
        }
        if !Self.flapHoldLimits.contains(flapHoldNanoseconds) {
            throw ConfigurationError(
                argument: "--flap-hold", value: DurationParser.format(flapHoldNanoseconds), reason: DurationParser.describe(Self.flapHoldLimits))
        }
        if !Self.flapHoldMaxLimits.contains(flapHoldMaxNanoseconds) || flapHoldMaxNanoseconds < flapHoldNanoseconds {
            throw ConfigurationError(
                argument: "--flap-hold-max", value: DurationParser.format(flapHoldMaxNanoseconds),
                reason: "must be at least flap-hold (\(DurationParser.format(flapHoldNanoseconds))) and at most "
                    + DurationParser.format(Self.flapHoldMaxLimits.upperBound))
        }
        if !Self.holdBytesLimits.contains(holdBytes) {
            throw ConfigurationError(
                argument: "--hold-bytes", value: ByteSizeParser.format(holdBytes), reason: ByteSizeParser.describe(Self.holdBytesLimits))
        }
        if !Self.replayRateLimits.contains(replayBytesPerSecond) {
            throw ConfigurationError(
                argument: "--replay-rate", value: ByteSizeParser.format(replayBytesPerSecond),
                reason: ByteSizeParser.describe(Self.replayRateLimits))
        }
        if !Self.shutdownTimeoutLimits.contains(shutdownTimeoutNanoseconds) {
            throw ConfigurationError(
                argument: "--shutdown-timeout", value: DurationParser.format(shutdownTimeoutNanoseconds),
                reason: DurationParser.describe(Self.shutdownTimeoutLimits))
        }
        if selfMetricsIntervalNanoseconds != 0 && !Self.selfMetricsIntervalLimits.contains(selfMetricsIntervalNanoseconds) {
            throw ConfigurationError(
                argument: "--self-metrics-interval", value: DurationParser.format(selfMetricsIntervalNanoseconds),
                reason: "must be 0 (off) or " + DurationParser.describe(Self.selfMetricsIntervalLimits).replacing("must be ", with: ""))
        }
        if let reason = Self.prefixProblem(selfMetricsPrefix) {
            throw ConfigurationError(argument: "--prefix", value: selfMetricsPrefix, reason: reason)
        }
        if !Self.stopDelayLimits.contains(stopDelayNanoseconds) {
            throw ConfigurationError(
                argument: "--stop-delay", value: DurationParser.format(stopDelayNanoseconds), reason: DurationParser.describe(Self.stopDelayLimits))
        }
        if !Self.dnsRefreshLimits.contains(dnsRefreshNanoseconds) {
            throw ConfigurationError(
                argument: "--dns-refresh", value: DurationParser.format(dnsRefreshNanoseconds),
                reason: DurationParser.describe(Self.dnsRefreshLimits))
        }
        if let endpoint = try AdminAddress.parse(admin, argument: "--admin"), endpoint.port != 0,
           let address = SocketAddress(numericHost: endpoint.host, port: endpoint.port),
           let listener = tcpListenAddresses.first(where: { $0.canonical == address.canonical || Relay.overlap($0, address) }) {
            // Both TCP on one port: the second to bind would fail, blamed on another process.
            throw ConfigurationError(
                argument: "--admin", value: admin,
                reason: "the port of this relay's TCP listener tcp:\(listener): give the admin endpoint a port of its own")
        }
        for backend in backends {
            if let port = backend.healthCheckPort, port == 0 {
                throw ConfigurationError(argument: "backend", value: backend.description, reason: "health-check-port must be 1-65535")
            }
        }
        if backends.count > 65_535 {
            throw ConfigurationError(argument: "backends", value: "\(backends.count)", reason: "at most 65535 backends")
        }
    }
}
