import Glibc

/// An IPv4 address and UDP port inside 127.0.0.0/8, the only place the tools send or listen.
public struct LoopbackEndpoint: Sendable, Equatable, CustomStringConvertible {
    /// The address in host byte order, e.g. `0x7F00_0001` for 127.0.0.1.
    public let address: UInt32
    /// The UDP port; 0 asks the kernel for an ephemeral port when binding.
    public let port: UInt16

    /// Creates an endpoint, refusing any address outside 127.0.0.0/8.
    public init(address: UInt32, port: UInt16) throws(BenchError) {
        guard address >> 24 == 127 else {
            throw BenchError("refusing non-loopback address \(Self.dotted(address)): only 127.0.0.0/8 is allowed")
        }
        self.address = address
        self.port = port
    }

    /// Parses `HOST:PORT`, where HOST is a dotted IPv4 literal inside 127.0.0.0/8.
    public init(parsing text: String) throws(BenchError) {
        guard let colon = text.lastIndex(of: ":") else {
            throw BenchError("expected HOST:PORT, got '\(text)'")
        }
        let host = try Self.parseAddress(String(text[..<colon]))
        guard let port = UInt16(text[text.index(after: colon)...]) else {
            throw BenchError("invalid port in '\(text)'")
        }
        try self.init(address: host, port: port)
    }

    /// Parses a dotted IPv4 literal and checks it lies inside 127.0.0.0/8.
    public static func parseAddress(_ text: String) throws(BenchError) -> UInt32 {
        var parsed = in_addr()
        guard inet_pton(AF_INET, text, &parsed) == 1 else {
            throw BenchError("'\(text)' is not a dotted IPv4 address (host names are not resolved)")
        }
        let address = UInt32(bigEndian: parsed.s_addr)
        guard address >> 24 == 127 else {
            throw BenchError("refusing non-loopback address \(text): only 127.0.0.0/8 is allowed")
        }
        return address
    }

    /// Formats a host-order address as dotted decimal.
    public static func dotted(_ address: UInt32) -> String {
        "\(address >> 24).\((address >> 16) & 0xFF).\((address >> 8) & 0xFF).\(address & 0xFF)"
    }

    /// `HOST:PORT` in dotted form.
    public var description: String { "\(Self.dotted(address)):\(port)" }

    /// The endpoint as a `sockaddr_in` ready for `bind(2)` or `connect(2)`.
    public var socketAddress: sockaddr_in {
        var result = sockaddr_in()
        result.sin_family = sa_family_t(AF_INET)
        result.sin_port = port.bigEndian
        result.sin_addr = in_addr(s_addr: address.bigEndian)
        return result
    }
}

/// Parses a comma-separated list of UDP ports such as `9001,9002,9003`, refusing duplicates and port 0.
public func parsePortList(_ text: String) throws(BenchError) -> [UInt16] {
    var ports: [UInt16] = []
    for item in text.split(separator: ",", omittingEmptySubsequences: false) {
        guard let port = UInt16(item.trimmingSpaces), port != 0 else {
            throw BenchError("invalid port '\(item)' in '\(text)'")
        }
        guard !ports.contains(port) else {
            throw BenchError("port \(port) listed twice in '\(text)'")
        }
        ports.append(port)
    }
    return ports
}

extension Substring {
    /// The substring without leading and trailing spaces.
    fileprivate var trimmingSpaces: Substring {
        var result = self
        while result.first == " " { result = result.dropFirst() }
        while result.last == " " { result = result.dropLast() }
        return result
    }
}
