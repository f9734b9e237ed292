import RelayKernel

/// A backend as given on the command line: `[SCHEME://]HOST:PORT[:INSTANCE]` or
/// `[SCHEME://][IPv6]:PORT[:INSTANCE]`, where an IPv6 address may name its interface after `%`
/// (`[fe80::1%eth0]:8125`), as a link-local one must, and the scheme is `udp` or `tcp`.
///
/// The scheme chooses the transport only (`transport`): it is not part of the identity
/// (`description`), so `tcp://10.0.0.1:8125` routes, counts and is checked as `10.0.0.1:8125`.
/// A backend written without one takes `--sendproto` (`RelayConfiguration.sendProtocol`).
///
/// The instance is a label only, as in the Go StatsRelay: it never changes routing. A weight
/// for the `etsy` and `ketama` rings follows `=` at the end (`10.0.0.1:8125:a=2`), where no
/// instance label, port or address can be mistaken for it; an instance label therefore never
/// contains `=`.
public struct BackendAddress: Sendable, Equatable, CustomStringConvertible {
    /// The host: an IPv4 or IPv6 literal (no brackets) or a DNS name.
    public var host: String
    /// The UDP port.
    public var port: UInt16
    /// The optional instance label.
    public var instance: String?
    /// The weight on the `etsy` and `ketama` rings (`=WEIGHT`), `nil` when not given (weight 1).
    /// Not part of the identity: a backend keeps its counters and health when only its weight
    /// changes.
    public var weight: Int?
    /// The port this backend's health check connects to, when it has its own (a configuration
    /// file's `health-check-port` under a backend: several statsd daemons on one host each have
    /// their own management port); `nil` takes `--health-check-port`, else the mode's default.
    /// Not part of the identity (`description`): it changes how the backend is checked, never
    /// where its lines go.
    public var healthCheckPort: UInt16?

    /// The transport written before `://`, or `nil` when none was (the relay's
    /// `--sendproto` applies). Not part of the identity.
    public var transport: BackendTransport?

    /// The largest weight accepted.
    public static let maximumWeight = 65_535

    /// A backend from its parts (the host unbracketed).
    public init(
        host: String, port: UInt16, instance: String? = nil, weight: Int? = nil, healthCheckPort: UInt16? = nil,
        transport: BackendTransport? = nil
    ) {
        self.transport = transport
        self.host = host
        self.port = port
        self.instance = instance
        self.weight = weight
        self.healthCheckPort = healthCheckPort
    }

    /// Parses `[SCHEME://]HOST:PORT[:INSTANCE][=WEIGHT]` or
    /// `[SCHEME://][IPv6]:PORT[:INSTANCE][=WEIGHT]`, the scheme `udp` or `tcp`.
    ///
    /// - Throws: `ConfigurationError` for argument `backend`, saying which part is wrong.
    public init(parsing written: String) throws(ConfigurationError) {
        func invalid(_ reason: String) -> ConfigurationError {
            ConfigurationError(argument: "backend", value: written, reason: reason)
        }
        var unschemed = Substring(written)
        if let colon = written.firstIndex(of: ":"), written[colon...].hasPrefix("://") {
            let scheme = written[..<colon]
            guard let transport = BackendTransport(rawValue: scheme.lowercased()) else {
                throw invalid("unknown scheme '\(scheme)://' (expected udp:// or tcp://)")
            }
            self.transport = transport
            unschemed = written[written.index(colon, offsetBy: 3)...]
        } else {
            transport = nil
        }
        var text = String(unschemed)
        if let equals = text.firstIndex(of: "=") {
            let weightText = text[text.index(after: equals)...]
            guard weightText.allSatisfy({ ("0"..."9").contains($0) }), let weight = Int(weightText),
                  (1...Self.maximumWeight).contains(weight) else {
                throw invalid("weight after '=' must be 1-\(Self.maximumWeight) (an instance label cannot contain '=')")
            }
            self.weight = weight
            text = String(text[..<equals])
        } else {
            weight = nil
        }
        var rest: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { throw invalid("missing ']' after IPv6 address") }
            host = String(text[text.index(after: text.startIndex)..<close])
            rest = text[text.index(after: close)...]
            guard rest.hasPrefix(":") else { throw invalid("expected ':PORT' after ']'") }
            rest = rest.dropFirst()
            if let percent = host.firstIndex(of: "%") {
                let zone = String(host[host.index(after: percent)...])
                guard SocketAddress(numericHost: String(host[..<percent]), port: 0)?.family == .ipv6 else {
                    throw invalid("'\(host[..<percent])' is not an IPv6 address")
                }
                guard SocketAddress.interfaceIndex(named: zone) != nil else {
                    throw invalid(zone.isEmpty ? "empty interface after '%'" : "no interface '\(zone)' on this host (after '%')")
                }
            }
            guard SocketAddress(numericHost: host, port: 0)?.family == .ipv6 else {
                throw invalid("'\(host)' is not an IPv6 address")
            }
        } else {
            let parts = text.split(separator: ":", omittingEmptySubsequences: false)
            guard parts.count >= 2 else { throw invalid("expected HOST:PORT[:INSTANCE]") }
            guard parts.count <= 3 else {
                throw invalid("too many ':' (write IPv6 addresses as [ADDRESS]:PORT)")
            }
            host = String(parts[0])
            rest = text[parts[1].startIndex...]
        }
        guard !host.isEmpty else { throw invalid("empty host") }
        // A host name is ASCII (an international one is written in its `xn--` form). Past ASCII,
        // Swift's `Character` view can join a `:` with a character before it (a prepend
        // character such as U+06DD), and the `:`s above would not be where the bytes say.
        guard host.utf8.allSatisfy({ $0 < 0x80 }) else {
            throw invalid("host is not ASCII (write an international domain name in its xn-- form)")
        }
        let portAndInstance = rest.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
        guard let portText = portAndInstance.first, !portText.isEmpty else { throw invalid("missing port") }
        guard let port = UInt16(portText), port > 0 else { throw invalid("port must be 1-65535") }
        self.port = port
        if portAndInstance.count == 2 {
            guard !portAndInstance[1].isEmpty else { throw invalid("empty instance after ':'") }
            instance = String(portAndInstance[1])
        } else {
            instance = nil
        }
        if host.contains(where: { $0 == " " || $0 == "/" }) { throw invalid("host contains a space or '/'") }
        if !text.hasPrefix("["), host.contains("%") {
            throw invalid("'%' names an IPv6 address's interface, only inside brackets: [ADDRESS%INTERFACE]:PORT")
        }
        healthCheckPort = nil
    }

    /// The address as an operator wrote it, without its scheme: `10.0.0.1:8125:a`, `[::1]:8125`.
    /// The backend's identity (counters, health, the hash rings), whatever its transport.
    public var description: String {
        let hostPart = host.contains(":") ? "[\(host)]" : host
        return instance.map { "\(hostPart):\(port):\($0)" } ?? "\(hostPart):\(port)"
    }

    /// The address with its scheme when one was written (`tcp://10.0.0.1:8125`), as a
    /// configuration file renders it.
    public var withScheme: String { transport.map { "\($0.rawValue)://\(description)" } ?? description }
}
