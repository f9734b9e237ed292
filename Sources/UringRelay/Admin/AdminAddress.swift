import RelayKernel

/// Where the admin endpoint listens (`--admin ADDR:PORT`), or `none`.
///
/// `ADDR` is a numeric IPv4 address, a bracketed IPv6 one (`[::1]:8127`) or `localhost`
/// (127.0.0.1). The default is loopback on 8127: clear of statsd's 8125/8126 and
/// statsd_exporter's 9102/9125, and reachable from this host only.
public struct AdminAddress: Sendable, Equatable, CustomStringConvertible {
    /// The default `--admin`.
    public static let defaultSpec = "127.0.0.1:8127"

    /// The numeric host, without brackets.
    public var host: String
    /// The TCP port (0: the kernel picks one).
    public var port: UInt16

    /// An address as given.
    public init(host: String, port: UInt16) {
        self.host = host
        self.port = port
    }

    /// `--admin`'s value: `nil` for `none`, else the address.
    ///
    /// - Parameter argument: the option or key named in an error.
    /// - Throws: `ConfigurationError` naming the value and what is wrong with it.
    public static func parse(_ text: String, argument: String = "--admin") throws(ConfigurationError) -> AdminAddress? {
        if text == "none" { return nil }
        func invalid(_ reason: String) -> ConfigurationError {
            ConfigurationError(argument: argument, value: text, reason: reason)
        }
        let host: Substring
        let portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") else {
                throw invalid("expected [IPv6]:PORT, ADDR:PORT or none")
            }
            host = text[text.index(after: text.startIndex)..<close]
            portText = text[text.index(close, offsetBy: 2)...]
        } else {
            guard let colon = text.lastIndex(of: ":"), !text[..<colon].contains(":") else {
                throw invalid("expected ADDR:PORT (e.g. \(defaultSpec)), [IPv6]:PORT or none")
            }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
        }
        guard let port = UInt16(portText) else { throw invalid("port must be 0-65535") }
        let numeric = host == "localhost" ? "127.0.0.1" : String(host)
        guard SocketAddress(numericHost: numeric, port: port) != nil else {
            throw invalid("'\(host)' is not a numeric IPv4 or IPv6 address (or localhost)")
        }
        return AdminAddress(host: numeric, port: port)
    }

    /// `127.0.0.1:8127` or `[::1]:8127`.
    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}
