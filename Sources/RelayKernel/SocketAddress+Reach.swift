import CLiburing
import Glibc

/// What the kernel says about an address as a destination: which addresses are this host's,
/// whether an IPv6 wildcard listener also takes IPv4, and whether a UDP socket can be
/// connected to it. None sends a packet.
extension SocketAddress {
    /// The addresses of this host's interfaces (`getifaddrs(3)`), port 0, canonical, IPv6
    /// link-local ones with their zone; up or down, since an address on a down interface is
    /// still this host's.
    ///
    /// Loopback addresses other than `127.0.0.1` and `::1` are not listed (all of `127.0.0.0/8`
    /// is this host's: see `isLoopback`), nor are addresses made local by a `local` route
    /// without an interface address (`ip route add local 10.0.0.0/8 dev lo`).
    /// - Returns: an empty list if `getifaddrs` fails (out of memory or descriptors).
    public static func localAddresses() -> [SocketAddress] {
        var list: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&list) == 0 else { return [] }
        defer { freeifaddrs(list) }
        var found: [SocketAddress] = []
        var entry = list
        while let current = entry {
            entry = current.pointee.ifa_next
            guard let address = current.pointee.ifa_addr else { continue }
            let family = Int32(address.pointee.sa_family)
            let length: Int
            switch family {
            case AF_INET: length = MemoryLayout<sockaddr_in>.size
            case AF_INET6: length = MemoryLayout<sockaddr_in6>.size
            default: continue
            }
            var storage = sockaddr_storage()
            withUnsafeMutableBytes(of: &storage) { raw in
                raw.copyMemory(from: UnsafeRawBufferPointer(start: address, count: length))
            }
            var local = SocketAddress(storage: storage, length: socklen_t(length))
            local.port = 0
            local = local.canonical
            if !found.contains(local) { found.append(local) }
        }
        return found
    }

    /// Whether a socket bound to the IPv6 wildcard `::` also receives IPv4 datagrams: the
    /// default of `IPV6_V6ONLY` for a new socket, read from one (`net.ipv6.bindv6only`).
    ///
    /// `false` where this host has no IPv6 (then no IPv6 socket can be bound at all).
    public static var ipv6WildcardAcceptsIPv4: Bool {
        let descriptor = socket(AF_INET6, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else { return false }
        // close(2) is not retried: see `systemCall`.
        defer { _ = close(descriptor) }
        var only: Int32 = 1
        var length = socklen_t(MemoryLayout<Int32>.size)
        guard (try? systemCall { getsockopt(descriptor, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &only, &length) }) != nil else {
            return false
        }
        return only == 0
    }

    /// Why a UDP socket cannot be connected to this address, or `nil` when it can. A UDP
    /// `connect(2)` only looks the route up and sends nothing.
    ///
    /// The kernel refuses a broadcast address of a network it is on with `EACCES` (unless the
    /// socket has `SO_BROADCAST`, which backend sockets never set), an IPv6 link-local address
    /// without a zone with `EINVAL`, and a destination without a route with `ENETUNREACH`.
    public func connectFailure() -> Errno? {
        let domain = family == .ipv6 ? AF_INET6 : AF_INET
        let descriptor: Int32
        do throws(Errno) {
            descriptor = try systemCall { socket(domain, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
        } catch {
            return error
        }
        // close(2) is not retried: see `systemCall`.
        defer { _ = close(descriptor) }
        do throws(Errno) {
            _ = try withUnsafeSockaddr { pointer, length throws(Errno) in
                try systemCall { connect(descriptor, pointer, length) }
            }
            return nil
        } catch {
            return error
        }
    }
}
