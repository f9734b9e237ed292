import CLiburing
import Glibc

/// An IPv4 or IPv6 socket address (`struct sockaddr_storage` with its length).
public struct SocketAddress: Sendable, Equatable, CustomStringConvertible {
    /// The address family.
    public enum Family: Sendable { case ipv4, ipv6 }

    var storage: sockaddr_storage
    var length: socklen_t

    /// The family of this address.
    public var family: Family { Int32(storage.ss_family) == AF_INET6 ? .ipv6 : .ipv4 }

    /// Parses a numeric IPv4 (`127.0.0.1`) or IPv6 (`::1`, no brackets) host and a port.
    ///
    /// - Returns: `nil` if `host` is not a numeric address.
    public init?(numericHost host: String, port: UInt16) {
        storage = sockaddr_storage()
        var v4 = in_addr()
        var v6 = in6_addr()
        if inet_pton(AF_INET, host, &v4) == 1 {
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = port.bigEndian
            address.sin_addr = v4
            length = socklen_t(MemoryLayout<sockaddr_in>.size)
            withUnsafeMutableBytes(of: &storage) { raw in
                raw.storeBytes(of: address, as: sockaddr_in.self)
            }
        } else if inet_pton(AF_INET6, host, &v6) == 1 {
            var address = sockaddr_in6()
            address.sin6_family = sa_family_t(AF_INET6)
            address.sin6_port = port.bigEndian
            address.sin6_addr = v6
            length = socklen_t(MemoryLayout<sockaddr_in6>.size)
            withUnsafeMutableBytes(of: &storage) { raw in
                raw.storeBytes(of: address, as: sockaddr_in6.self)
            }
        } else {
            return nil
        }
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
                }
            }
        }
    }

    /// The numeric host, without brackets.
    public var host: String {
        withUnsafeBytes(of: storage) { raw in
            var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
            switch family {
            case .ipv4:
                var address = raw.load(as: sockaddr_in.self).sin_addr
                inet_ntop(AF_INET, &address, &text, socklen_t(text.count))
            case .ipv6:
                var address = raw.load(as: sockaddr_in6.self).sin6_addr
                inet_ntop(AF_INET6, &address, &text, socklen_t(text.count))
            }
            return String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
    }

    /// `127.0.0.1:8125` or `[::1]:8125`.
    public var description: String {
        family == .ipv6 ? "[\(host)]:\(port)" : "\(host):\(port)"
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
