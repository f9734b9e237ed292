import Logging
import RelayKernel

/// The configuration file (`--config FILE`): YAML, one key per long option, decoded with
/// `Codable` (Yams), every key optional.
///
/// ```yaml
/// port: 8125                      # a key is a long option's name: --packet-len → packet-len
/// packet-len: 1400
/// on-backend-down: hold
/// backends:                       # routing order, as on the command line
///   - 10.0.0.1:8125:a             # HOST:PORT[:INSTANCE] …
///   - address: 10.0.0.2:8125      # … or a mapping with per-backend settings
///     label: b                    #   the INSTANCE label
///     health-check-port: 8136     #   this statsd's own management port
/// ```
///
/// A value holds what the flag's argument holds, written the same way (`10ms`, `8M`, `0-3,8`).
/// What the file leaves out keeps its default (`RelayConfiguration`); a flag given on the command
/// line overrides the file (`apply(to:)` on the file, then on the flags). Reading is strict: an
/// unknown key, a key twice, a wrong type or a bad value is refused with its key path and line
/// (`ConfigFileError`).
public struct ConfigFile: Sendable, Equatable, Decodable {
    /// One listener, of one kind: UDP written `"ADDR:PORT"` (`[IPv6]:PORT`) or as a mapping
    /// `{bind, port}`; a Unix datagram socket written `"unix:PATH"` or as a mapping
    /// `{unix: PATH, mode: "0660"}`.
    public struct Listener: Sendable, Equatable, Decodable {
        /// The address as written in the `"ADDR:PORT"` (or `"unix:PATH"`) form.
        public var text: String?
        /// The mapping form's `bind` (default `0.0.0.0`).
        public var bind: String?
        /// The mapping form's `port` (default 8125).
        public var port: Int?
        /// The mapping form's `unix`: a Unix datagram socket's path.
        public var unix: String?
        /// The mapping form's `mode` for `unix`: octal permission bits (default `0660`).
        public var mode: String?
        /// The mapping form's `tcp`: a TCP ingest listener's `ADDR:PORT`.
        public var tcp: String?

        public init(
            text: String? = nil, bind: String? = nil, port: Int? = nil, unix: String? = nil, mode: String? = nil, tcp: String? = nil
        ) {
            self.text = text
            self.bind = bind
            self.port = port
            self.unix = unix
            self.mode = mode
            self.tcp = tcp
        }

        enum CodingKeys: String, CodingKey {
            case bind, port, unix, mode, tcp
        }

        public init(from decoder: any Decoder) throws {
            if let text = try? decoder.singleValueContainer().decode(String.self) {
                self.init(text: text)
                return
            }
            let keyed = try decoder.container(keyedBy: CodingKeys.self)
            self.init(
                bind: try keyed.decodeIfPresent(String.self, forKey: .bind), port: try keyed.decodeIfPresent(Int.self, forKey: .port),
                unix: try keyed.decodeIfPresent(String.self, forKey: .unix), mode: try keyed.decodeIfPresent(String.self, forKey: .mode),
                tcp: try keyed.decodeIfPresent(String.self, forKey: .tcp))
        }
    }

    /// One backend: `"HOST:PORT[:INSTANCE]"`, or a mapping with `address` and per-backend settings.
    public struct Backend: Sendable, Equatable, Decodable {
        /// `HOST:PORT[:INSTANCE]` or `[IPv6]:PORT[:INSTANCE]`.
        public var address: String
        /// The instance label (the `:INSTANCE` of the short form): part of the backend's identity
        /// in counters, never of its route.
        public var label: String?
        /// The port this backend's health check connects to (its own statsd management port).
        public var healthCheckPort: Int?

        public init(address: String, label: String? = nil, healthCheckPort: Int? = nil) {
            self.address = address
            self.label = label
            self.healthCheckPort = healthCheckPort
        }

        enum CodingKeys: String, CodingKey {
            case address, label
            case healthCheckPort = "health-check-port"
        }

        public init(from decoder: any Decoder) throws {
            if let text = try? decoder.singleValueContainer().decode(String.self) {
                self.init(address: text)
                return
            }
            let keyed = try decoder.container(keyedBy: CodingKeys.self)
            self.init(
                address: try keyed.decode(String.self, forKey: .address),
                label: try keyed.decodeIfPresent(String.self, forKey: .label),
                healthCheckPort: try keyed.decodeIfPresent(Int.self, forKey: .healthCheckPort))
        }
    }

    public var listeners: [Listener]?
    /// Unix datagram listeners added to the others (`--unix-socket`, with `--unix-socket-mode`):
    /// the command line's only; a file writes them among its `listeners`.
    public var unixSockets: [Listener]?
    public var bind: String?
    public var port: Int?
    public var backends: [Backend]?
    public var packetLen: Int?
    public var flushInterval: String?
    public var shutdownTimeout: String?
    public var rcvbuf: String?
    public var maxDatagram: Int?
    public var receiveBuffers: Int?
    public var minWait: String?
    public var threads: Int?
    public var cpus: String?
    public var ioBackend: String?
    public var hash: String?
    public var reuseportGroup: Bool?
    public var reuseportSteering: String?
    public var healthCheck: String?
    public var healthCheckPort: Int?
    public var healthInterval: String?
    public var healthTimeout: String?
    public var healthRise: Int?
    public var healthFall: Int?
    public var onBackendDown: String?
    public var holdBytes: String?
    public var replayRate: String?
    public var dnsRefresh: String?
    public var admin: String?
    public var controlSocket: String?
    public var logLevel: String?
    public var prefix: String?
    public var selfMetricsInterval: String?
    public var logFormat: String?
    public var stopDelay: String?
    public var flapHoldMax: String?
    public var flapHold: String?
    public var validate: String?
    public var hashKey: String?
    public var metricsPrefix: String?
    public var metricsTags: String?
    public var sendproto: String?
    public var tcpBackendQueue: String?
    /// `--tcp-port`: a TCP ingest listener on the first listener's address.
    public var tcpPort: Int?
    /// `--tcp-max-connections`.
    public var tcpMaxConnections: Int?
    /// `--tcp-idle-timeout`, as written.
    public var tcpIdleTimeout: String?
    /// `--mirror`: the mirror pool's backends, in its routing order.
    public var mirror: [String]?
    /// `--mirror-hash`.
    public var mirrorHash: String?
    /// `--mirror-sample`, as written (a number in (0, 1]).
    public var mirrorSample: String?

    /// Where the settings came from, for errors: the file's path as given.
    public var source = "command line"
    /// The line of each key path the file has (`port`, `backends[1]`, `backends[1].label`).
    public var lines: [String: Int] = [:]

    enum CodingKeys: String, CodingKey, CaseIterable {
        case listeners, bind, port, backends
        case packetLen = "packet-len"
        case flushInterval = "flush-interval"
        case shutdownTimeout = "shutdown-timeout"
        case rcvbuf
        case maxDatagram = "max-datagram"
        case receiveBuffers = "receive-buffers"
        case minWait = "min-wait"
        case threads, cpus
        case ioBackend = "io-backend"
        case hash
        case reuseportGroup = "reuseport-group"
        case reuseportSteering = "reuseport-steering"
        case healthCheck = "health-check"
        case healthCheckPort = "health-check-port"
        case healthInterval = "health-interval"
        case healthTimeout = "health-timeout"
        case healthRise = "health-rise"
        case healthFall = "health-fall"
        case onBackendDown = "on-backend-down"
        case holdBytes = "hold-bytes"
        case replayRate = "replay-rate"
        case dnsRefresh = "dns-refresh"
        case admin
        case controlSocket = "control-socket"
        case logLevel = "log-level"
        case prefix = "prefix"
        case selfMetricsInterval = "self-metrics-interval"
        case logFormat = "log-format"
        case stopDelay = "stop-delay"
        case flapHoldMax = "flap-hold-max"
        case flapHold = "flap-hold"
        case validate
        case hashKey = "hash-key"
        case metricsPrefix = "metrics-prefix"
        case metricsTags = "metrics-tags"
        case sendproto
        case tcpBackendQueue = "tcp-backend-queue"
        case tcpPort = "tcp-port"
        case tcpMaxConnections = "tcp-max-connections"
        case tcpIdleTimeout = "tcp-idle-timeout"
        case mirror
        case mirrorHash = "mirror-hash"
        case mirrorSample = "mirror-sample"
    }

    /// Nothing set: every key keeps its default (or, for the command line, the file's value).
    public init() {}

    /// The keys this file (or command line) sets, by name.
    public var keysSet: Set<String> {
        var keys: Set<String> = []
        func note(_ key: CodingKeys, _ value: Any?) { if value != nil { keys.insert(key.rawValue) } }
        note(.listeners, listeners); note(.bind, bind); note(.port, port); note(.backends, backends)
        note(.packetLen, packetLen); note(.flushInterval, flushInterval); note(.shutdownTimeout, shutdownTimeout)
        note(.rcvbuf, rcvbuf); note(.maxDatagram, maxDatagram); note(.receiveBuffers, receiveBuffers)
        note(.minWait, minWait); note(.threads, threads); note(.cpus, cpus); note(.ioBackend, ioBackend)
        note(.hash, hash)
        note(.reuseportGroup, reuseportGroup); note(.reuseportSteering, reuseportSteering); note(.healthCheck, healthCheck); note(.healthCheckPort, healthCheckPort)
        note(.healthInterval, healthInterval); note(.healthTimeout, healthTimeout); note(.healthRise, healthRise)
        note(.healthFall, healthFall); note(.onBackendDown, onBackendDown); note(.holdBytes, holdBytes)
        note(.replayRate, replayRate); note(.dnsRefresh, dnsRefresh); note(.admin, admin); note(.logLevel, logLevel)
        note(.prefix, prefix)
        note(.selfMetricsInterval, selfMetricsInterval)
        note(.logFormat, logFormat)
        note(.stopDelay, stopDelay)
        note(.flapHoldMax, flapHoldMax)
        note(.flapHold, flapHold)
        note(.validate, validate)
        note(.hashKey, hashKey)
        note(.metricsPrefix, metricsPrefix)
        note(.metricsTags, metricsTags)
        note(.sendproto, sendproto); note(.tcpBackendQueue, tcpBackendQueue)
        note(.tcpPort, tcpPort); note(.tcpMaxConnections, tcpMaxConnections); note(.tcpIdleTimeout, tcpIdleTimeout)
        note(.controlSocket, controlSocket)
        note(.mirror, mirror); note(.mirrorHash, mirrorHash); note(.mirrorSample, mirrorSample)
        return keys
    }

    /// Writes every key this file sets into `configuration`, leaving the others as they are.
    ///
    /// `threads` is not written here (its default depends on `cpus` and on every source: see
    /// `RelayConfiguration.settleThreads`). Checks that need several keys at once are left to
    /// `RelayConfiguration.validate()`.
    /// - Throws: `ConfigurationError` whose `argument` is the key path (`flush-interval`,
    ///   `backends[2]`, `listeners[0].port`) and whose `value` is the value as written.
    public func apply(to configuration: inout RelayConfiguration) throws(ConfigurationError) {
        func invalid(_ path: String, _ value: String, _ reason: String) -> ConfigurationError {
            ConfigurationError(argument: path, value: value, reason: reason)
        }
        /// Runs a parser that names its own argument, and names the key path instead.
        func at<T>(_ path: String, _ body: () throws(ConfigurationError) -> T) throws(ConfigurationError) -> T {
            do { return try body() } catch { throw invalid(path, error.value, error.reason) }
        }
        func portNumber(_ path: String, _ value: Int, lowest: Int = 0) throws(ConfigurationError) -> UInt16 {
            guard (lowest...65_535).contains(value) else { throw invalid(path, "\(value)", "must be \(lowest)-65535") }
            return UInt16(value)
        }

        if let listeners {
            if bind != nil || port != nil {
                throw invalid(
                    "listeners", "", "give either listeners or bind and port (the one-listener shorthand), not both")
            }
            guard !listeners.isEmpty else {
                throw invalid("listeners", "[]", "at least one listener is required")
            }
            var addresses: [SocketAddress] = []
            var tcp: [SocketAddress] = []
            for (index, entry) in listeners.enumerated() {
                if let address = try Self.tcpListener(entry, path: "listeners[\(index)]") {
                    if index == 0 {
                        throw invalid(
                            "listeners[0]", "tcp:\(address)",
                            "the first listener is UDP (ADDR:PORT: the relay's own address); give TCP listeners after it")
                    }
                    tcp.append(address)
                    continue
                }
                if let unix = try Self.unixListener(entry, path: "listeners[\(index)]") {
                    if index == 0 {
                        throw invalid(
                            "listeners[0]", unix.address.description,
                            "the first listener is UDP (ADDR:PORT: the relay's own address); give Unix sockets after it")
                    }
                    addresses.append(unix.address)
                    configuration.unixSocketModes[unix.address.host] = unix.mode
                    continue
                }
                let host: String
                let number: UInt16
                if let text = entry.text {
                    (host, number) = try Self.parseListener(text, path: "listeners[\(index)]")
                } else {
                    host = entry.bind ?? "0.0.0.0"
                    number = try portNumber("listeners[\(index)].port", entry.port ?? 8125)
                    if SocketAddress(numericHost: host, port: 0) == nil {
                        throw invalid("listeners[\(index)].bind", host, "not an IPv4 or IPv6 address")
                    }
                }
                if index == 0 {
                    configuration.bindHost = host
                    configuration.port = number
                }
                addresses.append(SocketAddress(numericHost: host, port: number)!)
            }
            configuration.additionalListeners = Array(addresses.dropFirst())
            configuration.tcpListeners = tcp
        }
        for (index, entry) in (unixSockets ?? []).enumerated() {
            guard let unix = try Self.unixListener(entry, path: "unix-socket[\(index)]") else { continue }
            configuration.additionalListeners.append(unix.address)
            configuration.unixSocketModes[unix.address.host] = unix.mode
        }
        if let bind { configuration.bindHost = bind }
        if let tcpPort { configuration.tcpPort = try portNumber("tcp-port", tcpPort) }
        if let tcpMaxConnections {
            guard RelayConfiguration.tcpMaxConnectionsLimits.contains(tcpMaxConnections) else {
                throw invalid("tcp-max-connections", "\(tcpMaxConnections)", "must be 1-1000000")
            }
            configuration.tcpMaxConnections = tcpMaxConnections
        }
        if let tcpIdleTimeout {
            configuration.tcpIdleTimeoutNanoseconds = try at("tcp-idle-timeout") { () throws(ConfigurationError) in
                try DurationParser.nanoseconds(tcpIdleTimeout, argument: "", in: RelayConfiguration.tcpIdleTimeoutLimits)
            }
        }
        if let port { configuration.port = try portNumber("port", port) }
        if let backends {
            var parsed: [BackendAddress] = []
            for (index, entry) in backends.enumerated() {
                let isMapping = entry.label != nil || entry.healthCheckPort != nil || lines["backends[\(index)].address"] != nil
                let path = isMapping ? "backends[\(index)].address" : "backends[\(index)]"
                var backend = try at(path) { () throws(ConfigurationError) in try BackendAddress(parsing: entry.address) }
                if let label = entry.label {
                    let labelPath = "backends[\(index)].label"
                    if backend.instance != nil {
                        throw invalid(labelPath, label, "the address already has an instance label ('\(entry.address)'): give the label once")
                    }
                    // As the short form's INSTANCE: no ':' (it would end the label there) and no
                    // '=' (a weight would start there).
                    if label.utf8.contains(UInt8(ascii: ":")) || label.utf8.contains(UInt8(ascii: "=")) {
                        throw invalid(labelPath, label, "a label must not contain ':' or '='")
                    }
                    backend.instance = label
                }
                if let checkPort = entry.healthCheckPort {
                    backend.healthCheckPort = try portNumber("backends[\(index)].health-check-port", checkPort, lowest: 1)
                }
                parsed.append(backend)
            }
            configuration.backends = parsed
        }
        try applyMirror(to: &configuration)
        if let packetLen { configuration.packetBytes = packetLen }
        if let flushInterval {
            configuration.flushIntervalNanoseconds = try at("flush-interval") { () throws(ConfigurationError) in
                try DurationParser.nanoseconds(flushInterval, argument: "", in: RelayConfiguration.flushIntervalLimits)
            }
        }
        if let shutdownTimeout {
            configuration.shutdownTimeoutNanoseconds = try at("shutdown-timeout") { () throws(ConfigurationError) in
                try DurationParser.nanoseconds(shutdownTimeout, argument: "", in: RelayConfiguration.shutdownTimeoutLimits)
            }
        }
        if let rcvbuf {
            configuration.receiveBufferBytes = try at("rcvbuf") { () throws(ConfigurationError) in
                try ByteSizeParser.bytes(rcvbuf, argument: "", in: RelayConfiguration.receiveBufferLimits)
            }
        }
        if let maxDatagram { configuration.maxDatagramBytes = maxDatagram }
        if let receiveBuffers { configuration.receiveBuffers = receiveBuffers }
        if let minWait {
            // A bare 0 is how operators switch the minimum wait off; any other value needs its unit.
            let nanoseconds = minWait == "0" ? 0 : try at("min-wait") { () throws(ConfigurationError) in
                try DurationParser.nanoseconds(minWait, argument: "", in: RelayConfiguration.minimumWaitLimits)
            }
            configuration.minimumWaitMicroseconds = UInt32(nanoseconds / 1_000)
        }
        if let cpus { configuration.cpus = try at("cpus") { () throws(ConfigurationError) in try CPUList.parse(cpus) } }
        if let ioBackend {
            guard let choice = IOBackendChoice(rawValue: ioBackend) else {
                throw invalid("io-backend", ioBackend, "expected \(Self.choices(IOBackendChoice.allCases.map(\.rawValue)))")
            }
            configuration.ioBackend = choice
        }
        if let hash {
            guard let mode = HashMode(rawValue: hash) else {
                throw invalid("hash", hash, "expected \(Self.choices(HashMode.allCases.map(\.rawValue)))")
            }
            configuration.hashMode = mode
        }
        if let reuseportGroup { configuration.reusePortGroup = reuseportGroup }
        if let reuseportSteering {
            guard let steering = ReusePortSteering(rawValue: reuseportSteering) else {
                throw invalid("reuseport-steering", reuseportSteering, "expected \(Self.choices(ReusePortSteering.allCases.map(\.rawValue)))")
            }
            configuration.reusePortSteering = steering
        }
        if let healthCheck {
            guard let mode = HealthCheckMode(rawValue: healthCheck) else {
                throw invalid("health-check", healthCheck, "expected \(Self.choices(HealthCheckMode.allCases.map(\.rawValue)))")
            }
            configuration.healthCheck = mode
        }
        if let healthCheckPort { configuration.healthCheckPort = try portNumber("health-check-port", healthCheckPort, lowest: 1) }
        if let healthInterval {
            configuration.healthIntervalNanoseconds = try at("health-interval") { () throws(ConfigurationError) in
                try DurationParser.nanoseconds(healthInterval, argument: "", in: RelayConfiguration.healthIntervalLimits)
            }
        }
        if let healthTimeout {
            configuration.healthTimeoutNanoseconds = try at("health-timeout") { () throws(ConfigurationError) in
                try DurationParser.nanoseconds(healthTimeout, argument: "", in: RelayConfiguration.healthTimeoutLimits)
            }
        }
        if let healthRise { configuration.healthRise = healthRise }
        if let healthFall { configuration.healthFall = healthFall }
        if let onBackendDown {
            guard let policy = DownPolicy(rawValue: onBackendDown) else {
                throw invalid("on-backend-down", onBackendDown, "expected \(Self.choices(DownPolicy.allCases.map(\.rawValue)))")
            }
            configuration.onBackendDown = policy
        }
        if let holdBytes {
            configuration.holdBytes = try at("hold-bytes") { () throws(ConfigurationError) in
                try ByteSizeParser.bytes(holdBytes, argument: "", in: RelayConfiguration.holdBytesLimits)
            }
        }
        if let replayRate {
            configuration.replayBytesPerSecond = try at("replay-rate") { () throws(ConfigurationError) in
                try ByteSizeParser.bytes(replayRate, argument: "", in: RelayConfiguration.replayRateLimits)
            }
        }
        if let dnsRefresh {
            configuration.dnsRefreshNanoseconds = try at("dns-refresh") { () throws(ConfigurationError) in
                try DurationParser.nanoseconds(dnsRefresh, argument: "", in: RelayConfiguration.dnsRefreshLimits)
            }
        }
        if let admin {
            _ = try at("admin") { () throws(ConfigurationError) in try AdminAddress.parse(admin) }
            configuration.admin = admin
        }
        if let controlSocket {
            configuration.controlSocket = try at("control-socket") { () throws(ConfigurationError) in
                try RelayConfiguration.controlSocketPath(controlSocket)
            }
        }
        if let logLevel {
            guard let level = Logger.Level(rawValue: logLevel) else {
                throw invalid("log-level", logLevel, "expected \(Self.choices(Logger.Level.allCases.map(\.rawValue)))")
            }
            configuration.logLevel = level
        }
        if let prefix { configuration.selfMetricsPrefix = prefix }
        if let selfMetricsInterval {
            configuration.selfMetricsIntervalNanoseconds = try at("self-metrics-interval") { () throws(ConfigurationError) in
                try DurationParser.nanoseconds(selfMetricsInterval, argument: "", in: 0...RelayConfiguration.selfMetricsIntervalLimits.upperBound)
            }
        }
        if let logFormat {
            guard let format = RelayLogHandler.Format(rawValue: logFormat) else {
                throw invalid("log-format", logFormat, "expected \(Self.choices(RelayLogHandler.Format.allCases.map(\.rawValue)))")
            }
            configuration.logFormat = format
        }
        if let stopDelay {
            configuration.stopDelayNanoseconds = try at("stop-delay") { () throws(ConfigurationError) in
                try DurationParser.nanoseconds(stopDelay, argument: "", in: RelayConfiguration.stopDelayLimits)
            }
        }
        if let flapHoldMax {
            configuration.flapHoldMaxNanoseconds = try at("flap-hold-max") { () throws(ConfigurationError) in
                try DurationParser.nanoseconds(flapHoldMax, argument: "", in: RelayConfiguration.flapHoldMaxLimits)
            }
        }
        if let flapHold {
            configuration.flapHoldNanoseconds = try at("flap-hold") { () throws(ConfigurationError) in
                try DurationParser.nanoseconds(flapHold, argument: "", in: RelayConfiguration.flapHoldLimits)
            }
        }
        if let validate {
            guard let mode = ValidationMode(rawValue: validate) else {
                throw invalid("validate", validate, "expected \(Self.choices(ValidationMode.allCases.map(\.rawValue)))")
            }
            configuration.validation = mode
        }
        if let hashKey {
            guard let mode = HashKeyMode(rawValue: hashKey) else {
                throw invalid("hash-key", hashKey, "expected \(Self.choices(HashKeyMode.allCases.map(\.rawValue)))")
            }
            configuration.hashKey = mode
        }
        if metricsPrefix != nil || metricsTags != nil {
            configuration.rewrite = try LineRewrite(
                prefix: metricsPrefix ?? configuration.rewrite.prefix, tags: metricsTags ?? configuration.rewrite.tags,
                prefixArgument: "metrics-prefix", tagsArgument: "metrics-tags")
        }
        if let sendproto {
            guard let transport = BackendTransport(sendProtocol: sendproto) else {
                throw invalid("sendproto", sendproto, "expected UDP or TCP")
            }
            configuration.sendProtocol = transport
        }
        if let tcpBackendQueue {
            configuration.tcpBackendQueueBytes = try at("tcp-backend-queue") { () throws(ConfigurationError) in
                try ByteSizeParser.bytes(tcpBackendQueue, argument: "", in: RelayConfiguration.tcpBackendQueueLimits)
            }
        }
    }

    /// `a, b or c`.
    static func choices(_ names: [String]) -> String {
        names.count < 2 ? names.joined() : names.dropLast().joined(separator: ", ") + " or " + names.last!
    }

    /// The Unix datagram listener `entry` names (`"unix:PATH"`, or `{unix: PATH, mode}`) and
    /// its mode, or `nil` for a UDP one.
    ///
    /// - Throws: `ConfigurationError` at `path` for a path that cannot be bound (empty, too
    ///   long, abstract) or a mode that is not octal `0`-`0777`, or UDP keys mixed in.
    static func unixListener(_ entry: Listener, path: String) throws(ConfigurationError) -> (address: SocketAddress, mode: UInt32)? {
        let written: String
        let at: String
        if let unix = entry.unix {
            guard entry.bind == nil, entry.port == nil else {
                throw ConfigurationError(argument: path, value: unix, reason: "a Unix listener has no bind or port: give unix (and mode) alone")
            }
            (written, at) = (unix, path + ".unix")
        } else if let text = entry.text, text.hasPrefix("unix:") {
            (written, at) = (String(text.dropFirst(5)), path)
        } else {
            if entry.mode != nil {
                throw ConfigurationError(argument: path + ".mode", value: entry.mode!, reason: "mode applies to a Unix listener (unix: PATH)")
            }
            return nil
        }
        guard let address = SocketAddress(unixPath: written) else {
            throw ConfigurationError(
                argument: at, value: written, reason: "a Unix socket needs a file system path of 1-107 bytes (no abstract @name)")
        }
        var mode = RelayConfiguration.defaultUnixSocketMode
        if let text = entry.mode {
            guard let parsed = parseMode(text) else {
                throw ConfigurationError(argument: path + ".mode", value: text, reason: "expected octal permission bits 0-0777, e.g. 0660")
            }
            mode = parsed
        }
        return (address, mode)
    }

    /// The TCP ingest listener `entry` names (`"tcp:ADDR:PORT"`, or `{tcp: "ADDR:PORT"}`), or
    /// `nil` for another kind.
    ///
    /// - Throws: `ConfigurationError` at `path` for an address that is not `ADDR:PORT` or
    ///   `[IPv6]:PORT` with a numeric address, or other keys mixed in.
    static func tcpListener(_ entry: Listener, path: String) throws(ConfigurationError) -> SocketAddress? {
        let written: String
        let at: String
        if let tcp = entry.tcp {
            guard entry.bind == nil, entry.port == nil, entry.unix == nil, entry.mode == nil else {
                throw ConfigurationError(argument: path, value: tcp, reason: "a TCP listener is tcp: ADDR:PORT alone (no bind, port, unix or mode)")
            }
            (written, at) = (tcp, path + ".tcp")
        } else if let text = entry.text, text.hasPrefix("tcp:") {
            (written, at) = (String(text.dropFirst(4)), path)
        } else {
            return nil
        }
        let (host, port) = try parseListener(written, path: at)
        guard let address = SocketAddress(numericHost: host, port: port) else {
            throw ConfigurationError(argument: at, value: written, reason: "not a numeric IPv4 or IPv6 address")
        }
        return address
    }

    /// Octal permission bits `0`-`0777` (`660`, `0660`, `0o660`).
    public static func parseMode(_ text: String) -> UInt32? {
        let digits = text.hasPrefix("0o") ? String(text.dropFirst(2)) : text
        guard !digits.isEmpty, digits.count <= 4, let mode = UInt32(digits, radix: 8), mode <= 0o777 else { return nil }
        return mode
    }

    /// A listener written `ADDR:PORT` or `[IPv6]:PORT` (port 0: the kernel chooses).
    static func parseListener(_ text: String, path: String) throws(ConfigurationError) -> (host: String, port: UInt16) {
        func invalid(_ reason: String) -> ConfigurationError { ConfigurationError(argument: path, value: text, reason: reason) }
        let host: Substring
        let portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") else {
                throw invalid("expected ADDR:PORT or [IPv6]:PORT")
            }
            host = text[text.index(after: text.startIndex)..<close]
            portText = text[text.index(close, offsetBy: 2)...]
        } else {
            guard let colon = text.lastIndex(of: ":"), !text[..<colon].contains(":") else {
                throw invalid("expected ADDR:PORT or [IPv6]:PORT")
            }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
        }
        guard let port = UInt16(portText) else { throw invalid("port must be 0-65535") }
        guard SocketAddress(numericHost: String(host), port: port) != nil else {
            throw invalid("'\(host)' is not an IPv4 or IPv6 address")
        }
        return (String(host), port)
    }
}

extension RelayConfiguration {
    /// Sets `threads` from what was asked for, or to its default: one worker per CPU named in
    /// `cpus`, else per CPU this process may use.
    ///
    /// More workers than CPUs only compete for them (and each costs its buffers): refused unless
    /// the CPUs are named (`cpus`), the operator's explicit choice.
    /// - Parameters:
    ///   - requested: the `threads` asked for, if any.
    ///   - argument: how to name it in an error (`--threads`, or the file's key `threads`).
    ///   - allowed: the CPUs this process may use.
    public mutating func settleThreads(requested: Int?, argument: String, allowed: [Int]) throws(ConfigurationError) {
        if let requested, cpus == nil, !allowed.isEmpty, requested > allowed.count {
            throw ConfigurationError(
                argument: argument, value: "\(requested)",
                reason: "this process may use \(allowed.count) CPU\(allowed.count == 1 ? "" : "s") "
                    + "(\(allowed.map(String.init).joined(separator: ","))): give at most \(allowed.count), "
                    + "or name the CPUs to pin workers to with --cpus")
        }
        threads = requested ?? cpus?.count ?? max(1, allowed.count)
    }
}
