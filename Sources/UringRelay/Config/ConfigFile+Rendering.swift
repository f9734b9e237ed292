import Yams

extension ConfigFile {
    /// `configuration` as a configuration file holding every key (`statsrelay check-config`):
    /// the first line of each key ends with a comment saying what a reload does with it. Reading the text back
    /// (`parse`, then `apply(to:)`) gives `configuration` again.
    ///
    /// - Parameter header: comment lines written first (without their `# `).
    public static func render(_ configuration: RelayConfiguration, header: [String] = []) -> String {
        var text = header.map { "# \($0)\n" }.joined()
        for key in keys where key.name != "bind" && key.name != "port" {
            let single = Node.mapping(Node.Mapping([(Node(key.name), node(of: key.name, in: configuration))]))
            let yaml = (try? Yams.serialize(node: single)) ?? "\(key.name): \(value(of: key.name, in: configuration))\n"
            // The key's first line carries what a reload does with it.
            let firstLine = yaml.prefix { $0 != "\n" }
            let note = key.reload == .applied ? "# reload: applied at SIGHUP" : "# reload: needs a restart"
            text += firstLine + "  " + note + yaml.dropFirst(firstLine.count)
        }
        return text
    }

    /// The value of top-level key `key` in `configuration`, on one line as a log shows it:
    /// `10ms`, `[127.0.0.1:9001, 127.0.0.1:9002]`.
    public static func value(of key: String, in configuration: RelayConfiguration) -> String {
        Shape.text(of: node(of: key, in: configuration))
    }

    /// The YAML node of key `key` (a top-level key's name) for `configuration`'s value, written
    /// as the file takes it (durations and sizes with their units).
    static func node(of key: String, in configuration: RelayConfiguration) -> Node {
        let c = configuration
        func scalar(_ text: String) -> Node { Node(text) }
        func optional(_ value: (some CustomStringConvertible)?) -> Node { value.map { Node($0.description) } ?? Node("null") }
        switch key {
        case "listeners":
            let host = c.bindHost.contains(":") ? "[\(c.bindHost)]" : c.bindHost
            return Node.sequence(Node.Sequence([scalar("\(host):\(c.port)")] + c.additionalListeners.map { address -> Node in
                guard let path = address.unixPath else { return scalar(address.description) }
                let mode = "0" + String(c.unixSocketMode(for: path), radix: 8)
                return Node.mapping(Node.Mapping([(Node("unix"), scalar(path)), (Node("mode"), scalar(mode))]))
            } + c.tcpListeners.map { scalar("tcp:\($0)") }))
        case "bind": return scalar(c.bindHost)
        case "port": return scalar("\(c.port)")
        case "backends":
            return Node.sequence(Node.Sequence(c.backends.map { backend -> Node in
                guard let checkPort = backend.healthCheckPort else { return scalar(backend.written) }
                var address = backend
                address.instance = nil
                var pairs: [(Node, Node)] = [(Node("address"), scalar(address.written))]
                if let label = backend.instance { pairs.append((Node("label"), scalar(label))) }
                pairs.append((Node("health-check-port"), scalar("\(checkPort)")))
                return Node.mapping(Node.Mapping(pairs))
            }))
        case "packet-len": return scalar("\(c.packetBytes)")
        case "flush-interval": return scalar(DurationParser.format(c.flushIntervalNanoseconds))
        case "shutdown-timeout": return scalar(DurationParser.format(c.shutdownTimeoutNanoseconds))
        case "rcvbuf": return scalar(ByteSizeParser.format(c.receiveBufferBytes))
        case "max-datagram": return scalar("\(c.maxDatagramBytes)")
        case "receive-buffers": return scalar("\(c.receiveBuffers)")
        case "min-wait":
            return scalar(c.minimumWaitMicroseconds == 0 ? "0" : DurationParser.format(UInt64(c.minimumWaitMicroseconds) * 1_000))
        case "threads": return scalar("\(c.threads)")
        case "cpus": return optional(c.cpus.map(Self.cpuList))
        case "io-backend": return scalar(c.ioBackend.rawValue)
        case "hash": return scalar(c.hashMode.rawValue)
        case "reuseport-group": return scalar(c.reusePortGroup ? "true" : "false")
        case "reuseport-steering": return scalar(c.reusePortSteering.rawValue)
        case "health-check": return scalar(c.healthCheck.rawValue)
        case "health-check-port": return optional(c.healthCheckPort)
        case "health-interval": return scalar(DurationParser.format(c.healthIntervalNanoseconds))
        case "health-timeout": return scalar(DurationParser.format(c.healthTimeoutNanoseconds))
        case "health-rise": return scalar("\(c.healthRise)")
        case "health-fall": return scalar("\(c.healthFall)")
        case "on-backend-down": return scalar(c.onBackendDown.rawValue)
        case "hold-bytes": return scalar(ByteSizeParser.format(c.holdBytes))
        case "replay-rate": return scalar(ByteSizeParser.format(c.replayBytesPerSecond))
        case "dns-refresh": return scalar(DurationParser.format(c.dnsRefreshNanoseconds))
        case "admin": return scalar(c.admin)
        case "control-socket": return scalar(c.controlSocket ?? "none")
        case "log-level": return scalar(c.logLevel.rawValue)
        case "prefix": return scalar(c.selfMetricsPrefix)
        case "self-metrics-interval": return scalar(DurationParser.format(c.selfMetricsIntervalNanoseconds))
        case "log-format": return scalar(c.logFormat.rawValue)
        case "stop-delay": return scalar(DurationParser.format(c.stopDelayNanoseconds))
        case "flap-hold-max": return scalar(DurationParser.format(c.flapHoldMaxNanoseconds))
        case "flap-hold": return scalar(DurationParser.format(c.flapHoldNanoseconds))
        case "validate": return scalar(c.validation.rawValue)
        case "hash-key": return scalar(c.hashKey.rawValue)
        // Empty written `""`: a bare `key:` would read back as null.
        case "metrics-prefix": return Node(c.rewrite.prefix, .implicit, .doubleQuoted)
        case "metrics-tags": return Node(c.rewrite.tags, .implicit, .doubleQuoted)
        case "sendproto": return scalar(c.sendProtocol.rawValue.uppercased())
        case "tcp-backend-queue": return scalar(ByteSizeParser.format(c.tcpBackendQueueBytes))
        case "tcp-port": return optional(c.tcpPort)
        case "tcp-max-connections": return scalar("\(c.tcpMaxConnections)")
        case "tcp-idle-timeout": return scalar(DurationParser.format(c.tcpIdleTimeoutNanoseconds))
        case "mirror": return Node.sequence(Node.Sequence(c.mirror.map { scalar($0.written) }))
        case "mirror-hash": return scalar(c.mirrorHashMode.rawValue)
        case "mirror-sample": return scalar("\(c.mirrorSample)")
        default: preconditionFailure("no key '\(key)' in ConfigFile.keys")
        }
    }

    /// CPUs in `cpuset` syntax, runs collapsed: `[0, 1, 2, 3, 8]` → `0-3,8`.
    static func cpuList(_ cpus: [Int]) -> String {
        var parts: [String] = []
        var index = 0
        while index < cpus.count {
            var end = index
            while end + 1 < cpus.count && cpus[end + 1] == cpus[end] + 1 { end += 1 }
            parts.append(end == index ? "\(cpus[index])" : "\(cpus[index])-\(cpus[end])")
            index = end + 1
        }
        return parts.joined(separator: ",")
    }
}
