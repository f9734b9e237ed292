import CLiburing
import Glibc

/// An IPv4 or IPv6 socket address, or a Unix socket's path (`struct sockaddr_storage` with its
/// length; see `SocketAddress+Unix.swift` for the Unix one, a listener's, which has no port).
public struct SocketAddress: Sendable, Equatable, CustomStringConvertible {
    /// The address family.
    public enum Family: Sendable { case ipv4, ipv6, unix }

    var storage: sockaddr_storage
    var length: socklen_t

    /// The family of this address.
    public var family: Family {
        switch Int32(storage.ss_family) {
        case AF_INET6: .ipv6
        case AF_UNIX: .unix
        default: .ipv4
        }
    }

    /// Parses a numeric IPv4 (`127.0.0.1`) or IPv6 (`::1`, no brackets) host and a port. An IPv6
    /// host may name its zone after `%` (RFC 4007), by interface name or index: `fe80::1%eth0`,
    /// `fe80::1%2`; a link-local address needs one to be sent to.
    ///
    /// - Returns: `nil` if `host` is not a numeric address, or names an interface this host
    ///   lacks (`interfaceIndex(named:)` tells the two apart).
    public init?(numericHost host: String, port: UInt16) {
        storage = sockaddr_storage()
        var v4 = in_addr()
        var v6 = in6_addr()
        var address = host
        var scope: UInt32 = 0
        if let percent = host.firstIndex(of: "%") {
            address = String(host[..<percent])
            guard let index = Self.interfaceIndex(named: String(host[host.index(after: percent)...])) else { return nil }
            scope = index
        }
        if !host.contains("%") && inet_pton(AF_INET, address, &v4) == 1 {
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = port.bigEndian
            address.sin_addr = v4
            length = socklen_t(MemoryLayout<sockaddr_in>.size)
            withUnsafeMutableBytes(of: &storage) { raw in
                raw.storeBytes(of: address, as: sockaddr_in.self)
            }
        } else if inet_pton(AF_INET6, address, &v6) == 1 {
            var address = sockaddr_in6()
            address.sin6_family = sa_family_t(AF_INET6)
            address.sin6_port = port.bigEndian
            address.sin6_addr = v6
            address.sin6_scope_id = scope
            length = socklen_t(MemoryLayout<sockaddr_in6>.size)
            withUnsafeMutableBytes(of: &storage) { raw in
                raw.storeBytes(of: address, as: sockaddr_in6.self)
            }
        } else {
            return nil
        }
    }

    /// The index of an IPv6 zone as written after `%`: a decimal interface index as is, an
    /// interface name through `if_nametoindex(3)`.
    ///
    /// - Returns: `nil` for an empty zone or an interface this host lacks.
    public static func interfaceIndex(named zone: String) -> UInt32? {
        guard !zone.isEmpty else { return nil }
        if zone.allSatisfy(\.isASCII), zone.allSatisfy(\.isNumber) { return UInt32(zone).flatMap { $0 == 0 ? nil : $0 } }
        let index = if_nametoindex(zone)
        return index == 0 ? nil : index
    }

    /// Wraps an address the kernel filled in (`getsockname`, `getaddrinfo`).
    init(storage: sockaddr_storage, length: socklen_t) {
        self.storage = storage
        self.length = length
    }

    /// Resolves a host name or numeric address with `getaddrinfo(3)` for UDP.
    ///
    /// - Returns: every address found, IPv4 first, in resolver order otherwise.
    /// - Throws: `ResolutionError` naming the host and the resolver's reason.
    public static func resolve(host: String, port: UInt16) throws(ResolutionError) -> [SocketAddress] {
        if let numeric = SocketAddress(numericHost: host, port: port) { return [numeric] }
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_DGRAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(host, String(port), &hints, &list)
        guard status == 0 else {
            throw ResolutionError(host: host, reason: String(cString: gai_strerror(status)))
        }
        defer { freeaddrinfo(list) }
        var found: [SocketAddress] = []
        var entry = list
        while let current = entry {
            if let address = current.pointee.ai_addr,
               current.pointee.ai_family == AF_INET || current.pointee.ai_family == AF_INET6 {
                var storage = sockaddr_storage()
                let length = Int(current.pointee.ai_addrlen)
                withUnsafeMutableBytes(of: &storage) { raw in
                    raw.copyMemory(from: UnsafeRawBufferPointer(start: address, count: min(length, raw.count)))
                }
                let resolved = SocketAddress(storage: storage, length: socklen_t(length))
                if !found.contains(resolved) { found.append(resolved) }
            }
            entry = current.pointee.ai_next
        }
        found.sort { $0.family == .ipv4 && $1.family == .ipv6 }
        if found.isEmpty { throw ResolutionError(host: host, reason: "no IPv4 or IPv6 address") }
        return found
    }

    /// The port in host byte order.
    public var port: UInt16 {
        get {
            withUnsafeBytes(of: storage) { raw in
                switch family {
                case .ipv4: UInt16(bigEndian: raw.load(as: sockaddr_in.self).sin_port)
                case .ipv6: UInt16(bigEndian: raw.load(as: sockaddr_in6.self).sin6_port)
                case .unix: 0
                }
            }
        }
        set {
            let family = self.family
            withUnsafeMutableBytes(of: &storage) { raw in
                // sin_port and sin6_port share their offset, but each is written through its own type.
                switch family {
                case .ipv4:
                    var address = raw.load(as: sockaddr_in.self)
                    address.sin_port = newValue.bigEndian
                    raw.storeBytes(of: address, as: sockaddr_in.self)
                case .ipv6:
                    var address = raw.load(as: sockaddr_in6.self)
                    address.sin6_port = newValue.bigEndian
                    raw.storeBytes(of: address, as: sockaddr_in6.self)
                case .unix:
                    break  // a path has no port
                }
            }
        }
    }

    /// The numeric host, without brackets; an IPv6 zone follows `%`, by interface name where the
    /// interface still exists (`fe80::1%eth0`), else by index.
    public var host: String {
        if family == .unix { return unixPath ?? "" }
        let numeric = withUnsafeBytes(of: storage) { raw in
            var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
            switch family {
            case .ipv4:
                var address = raw.load(as: sockaddr_in.self).sin_addr
                inet_ntop(AF_INET, &address, &text, socklen_t(text.count))
            case .ipv6:
                var address = raw.load(as: sockaddr_in6.self).sin6_addr
                inet_ntop(AF_INET6, &address, &text, socklen_t(text.count))
            case .unix:
                break
            }
            return String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
        let scope = scopeID
        guard scope != 0 else { return numeric }
        var name = [CChar](repeating: 0, count: Int(IF_NAMESIZE) + 1)
        guard if_indextoname(scope, &name) != nil else { return "\(numeric)%\(scope)" }
        return "\(numeric)%" + String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// The IPv6 zone (interface index) the address is scoped to; 0 for none and for IPv4.
    public var scopeID: UInt32 {
        guard family == .ipv6 else { return 0 }
        return withUnsafeBytes(of: storage) { $0.load(as: sockaddr_in6.self).sin6_scope_id }
    }

    /// The address's bytes in network order: 4 for IPv4, 16 for IPv6, none for a Unix path.
    public var addressBytes: [UInt8] {
        withUnsafeBytes(of: storage) { raw in
            switch family {
            case .ipv4: withUnsafeBytes(of: raw.load(as: sockaddr_in.self).sin_addr) { Array($0) }
            case .ipv6: withUnsafeBytes(of: raw.load(as: sockaddr_in6.self).sin6_addr) { Array($0) }
            case .unix: []
            }
        }
    }

    /// The same destination written one way, so that spellings of one address compare equal: an
    /// IPv4-mapped IPv6 address (`::ffff:127.0.0.1`, which an IPv6 socket sends over IPv4) as
    /// IPv4, and an IPv6 address without its zone unless it is link-local (Linux ignores the
    /// zone of other addresses), with no flow label.
    public var canonical: SocketAddress {
        guard family == .ipv6 else { return self }
        let bytes = addressBytes
        if bytes[0..<10].allSatisfy({ $0 == 0 }) && bytes[10] == 0xff && bytes[11] == 0xff {
            let v4 = bytes[12...].map(String.init).joined(separator: ".")
            return SocketAddress(numericHost: v4, port: port)!
        }
        var copy = self
        let keepsZone = isLinkLocal
        withUnsafeMutableBytes(of: &copy.storage) { raw in
            var address = raw.load(as: sockaddr_in6.self)
            address.sin6_flowinfo = 0
            if !keepsZone { address.sin6_scope_id = 0 }
            raw.storeBytes(of: address, as: sockaddr_in6.self)
        }
        return copy
    }

    /// Whether this is the unspecified address (`0.0.0.0`, `::`): a wildcard to bind to, and,
    /// as a destination, this host (Linux sends to loopback).
    public var isUnspecified: Bool { family != .unix && addressBytes.allSatisfy { $0 == 0 } }

    /// Whether this is a multicast group (`224.0.0.0/4`, `ff00::/8`).
    public var isMulticast: Bool {
        guard family != .unix else { return false }
        let bytes = addressBytes
        return family == .ipv4 ? bytes[0] & 0xf0 == 0xe0 : bytes[0] == 0xff
    }

    /// Whether this is the IPv4 limited broadcast `255.255.255.255`. (A network's own broadcast
    /// address is known only to the kernel: see `connectFailure()`.)
    public var isLimitedBroadcast: Bool { family == .ipv4 && addressBytes.allSatisfy { $0 == 0xff } }

    /// Whether this is an IPv6 link-local address (`fe80::/10`): one per link, so it needs a zone.
    public var isLinkLocal: Bool {
        let bytes = addressBytes
        return family == .ipv6 && bytes[0] == 0xfe && bytes[1] & 0xc0 == 0x80
    }

    /// Whether this is a loopback address (`127.0.0.0/8`, `::1`): this host, whatever its interfaces.
    public var isLoopback: Bool {
        guard family != .unix else { return false }
        let bytes = addressBytes
        return family == .ipv4 ? bytes[0] == 127 : bytes[0..<15].allSatisfy { $0 == 0 } && bytes[15] == 1
    }

    /// Whether `other` is the same host address (family, bytes and zone), whatever the ports.
    public func sameHost(as other: SocketAddress) -> Bool {
        family == other.family && scopeID == other.scopeID && addressBytes == other.addressBytes
    }

    /// `127.0.0.1:8125`, `[::1]:8125`, or `unix:/run/statsrelay.sock` for a Unix path.
    public var description: String {
        switch family {
        case .ipv4: "\(host):\(port)"
        case .ipv6: "[\(host)]:\(port)"
        case .unix: "unix:\(host)"
        }
    }

    public static func == (lhs: SocketAddress, rhs: SocketAddress) -> Bool {
        guard lhs.length == rhs.length else { return false }
        return withUnsafeBytes(of: lhs.storage) { left in
            withUnsafeBytes(of: rhs.storage) { right in
                memcmp(left.baseAddress!, right.baseAddress!, Int(lhs.length)) == 0
            }
        }
    }

    /// Lends the address as `sockaddr *` and its length, for `bind`, `connect` and `sendto`.
    func withUnsafeSockaddr<Result, Failure: Error>(
        _ body: (UnsafePointer<sockaddr>, socklen_t) throws(Failure) -> Result
    ) throws(Failure) -> Result {
        try withUnsafeBytes(of: storage) { raw throws(Failure) in
            try body(raw.baseAddress!.assumingMemoryBound(to: sockaddr.self), length)
        }
    }
}

/// A host name that did not resolve.
public struct ResolutionError: Error, CustomStringConvertible, Sendable {
    /// The name that was looked up.
    public var host: String
    /// The resolver's reason (`gai_strerror`).
    public var reason: String

    /// A failure to resolve `host`, for `reason`.
    public init(host: String, reason: String) {
        self.host = host
        self.reason = reason
    }

    public var description: String { "resolve \(host): \(reason)" }
}
