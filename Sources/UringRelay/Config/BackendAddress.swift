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
    /// The separators are found in the UTF-8 bytes, never in the `Character` view: past ASCII
    /// a character before a `:` or `=` can join it into one grapheme (a prepend character such
    /// as U+06DD), which a `Character` search would not see.
    ///
    /// - Throws: `ConfigurationError` for argument `backend`, saying which part is wrong.
    public init(parsing written: String) throws(ConfigurationError) {
        func invalid(_ reason: String) -> ConfigurationError {
            ConfigurationError(argument: "backend", value: written, reason: reason)
        }
        /// Where `byte` (ASCII) first is in `text`, by its UTF-8 bytes.
        func first(_ byte: Unicode.Scalar, in text: Substring) -> String.Index? { text.utf8.firstIndex(of: UInt8(ascii: byte)) }
        var text = Substring(written)
        if let colon = first(":", in: text), text.utf8[colon...].starts(with: "://".utf8) {
            let scheme = text[..<colon]
            guard let transport = BackendTransport(rawValue: scheme.lowercased()) else {
                throw invalid("unknown scheme '\(scheme)://' (expected udp:// or tcp://)")
            }
            self.transport = transport
            text = text[text.utf8.index(colon, offsetBy: 3)...]
        } else {
            transport = nil
        }
        if let equals = first("=", in: text) {
            let weightText = text[text.utf8.index(after: equals)...]
            guard !weightText.isEmpty, weightText.utf8.allSatisfy({ (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) }),
                  let weight = Int(weightText), (1...Self.maximumWeight).contains(weight) else {
                throw invalid("weight after '=' must be 1-\(Self.maximumWeight) (an instance label cannot contain '=')")
            }
            self.weight = weight
            text = text[..<equals]
        } else {
            weight = nil
        }
        let bracketed = text.utf8.first == UInt8(ascii: "[")
        var rest: Substring
        if bracketed {
            guard let close = first("]", in: text) else { throw invalid("missing ']' after IPv6 address") }
            host = String(text[text.utf8.index(after: text.startIndex)..<close])
            rest = text[text.utf8.index(after: close)...]
            guard rest.utf8.first == UInt8(ascii: ":") else { throw invalid("expected ':PORT' after ']'") }
            rest = rest[rest.utf8.index(after: rest.startIndex)...]
            if let percent = first("%", in: Substring(host)) {
                let zone = String(host[host.utf8.index(after: percent)...])
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
            guard let colon = first(":", in: text) else { throw invalid("expected HOST:PORT[:INSTANCE]") }
            host = String(text[..<colon])
            rest = text[text.utf8.index(after: colon)...]
            if let second = first(":", in: rest), first(":", in: rest[rest.utf8.index(after: second)...]) != nil {
                throw invalid("too many ':' (write IPv6 addresses as [ADDRESS]:PORT)")
            }
        }
        guard !host.isEmpty else { throw invalid("empty host") }
        // A host name is ASCII (an international one is written in its `xn--` form).
        guard host.utf8.allSatisfy({ $0 < 0x80 }) else {
            throw invalid("host is not ASCII (write an international domain name in its xn-- form)")
        }
        let instanceColon = first(":", in: rest)
        let portText = rest[..<(instanceColon ?? rest.endIndex)]
        guard !portText.isEmpty else { throw invalid("missing port") }
        guard let port = UInt16(portText), port > 0 else { throw invalid("port must be 1-65535") }
        self.port = port
        if let instanceColon {
            let label = rest[rest.utf8.index(after: instanceColon)...]
            guard !label.isEmpty else { throw invalid("empty instance after ':'") }
            instance = String(label)
        } else {
            instance = nil
        }
        if host.utf8.contains(where: { $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "/") }) { throw invalid("host contains a space or '/'") }
        if !bracketed, host.utf8.contains(UInt8(ascii: "%")) {
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

    /// The address with its scheme when one was written (`tcp://10.0.0.1:8125`).
    public var withScheme: String { transport.map { "\($0.rawValue)://\(description)" } ?? description }

    /// The address as a configuration file renders it: with its scheme when one was written and
    /// its weight when one was given (`tcp://10.0.0.1:8125:a=2`). It parses back to this address
    /// (less `healthCheckPort`, which a file writes beside it).
    public var written: String { weight.map { "\(withScheme)=\($0)" } ?? withScheme }
}
