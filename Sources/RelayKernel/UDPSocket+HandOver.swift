import CLiburing
import Glibc

/// Listening sockets that cross a process boundary: copied for the next process, adopted from
/// the previous one (a takeover, `SCM_RIGHTS`) or from systemd, and checked before use.
extension UDPSocket {
    /// A second owner of the same socket (`fcntl(F_DUPFD_CLOEXEC)`): the kernel socket, its
    /// receive queue and its place in the port's `SO_REUSEPORT` group stay until every owner
    /// has closed.
    ///
    /// - Throws: `SystemCallError` for `fcntl F_DUPFD_CLOEXEC`, with this socket's address.
    public func duplicate() throws(SystemCallError) -> UDPSocket {
        let descriptor = self.descriptor
        do throws(Errno) {
            return UDPSocket(descriptor: try systemCall { fcntl(descriptor, F_DUPFD_CLOEXEC, 0) })
        } catch { throw SystemCallError("fcntl F_DUPFD_CLOEXEC", localAddress.description, error) }
    }

    /// Owns `descriptor`, a socket this process received (from `SCM_RIGHTS` or systemd), without
    /// any check: call `verifyListener(expected:)` before relaying on it.
    ///
    /// - Precondition: `descriptor` is open and owned by nobody else in this process.
    public static func adopting(descriptor: Int32) -> UDPSocket { UDPSocket(descriptor: descriptor) }

    /// Why this socket cannot serve as a listener inherited for `expected`, or `nil` when it
    /// can: for a Unix `expected`, a datagram socket bound to that path; else a bound UDP socket (`SO_TYPE` `SOCK_DGRAM`, `SO_PROTOCOL` UDP, IPv4 or
    /// IPv6) with `SO_REUSEPORT` set (the port's other workers share it) unless
    /// `requiringReusePort` is false (one socket every worker reads), bound to `expected`
    /// (port 0 in `expected` accepts any port).
    public func listenerMismatch(expected: SocketAddress?, requiringReusePort: Bool = true) -> String? {
        guard let type = try? option(SOL_SOCKET, SO_TYPE), type == Int32(SOCK_DGRAM.rawValue) else {
            return "not a datagram socket (SO_TYPE)"
        }
        if expected?.family == .unix {
            // A Unix datagram listener: one socket every worker reads, no SO_REUSEPORT.
            let bound = localAddress
            guard bound.family == .unix else { return "not a Unix socket (getsockname)" }
            return bound == expected ? nil : "bound to \(bound), not \(expected!)"
        }
        guard let proto = try? option(SOL_SOCKET, SO_PROTOCOL), proto == Int32(IPPROTO_UDP) else {
            return "not a UDP socket (SO_PROTOCOL)"
        }
        guard !requiringReusePort || (try? option(SOL_SOCKET, SO_REUSEPORT)).map({ $0 != 0 }) == true else {
            return "SO_REUSEPORT is not set"
        }
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let named = withUnsafeMutableBytes(of: &storage) { raw in
            try? systemCall { getsockname(descriptor, raw.baseAddress!.assumingMemoryBound(to: sockaddr.self), &length) }
        }
        guard named != nil, storage.ss_family == sa_family_t(AF_INET) || storage.ss_family == sa_family_t(AF_INET6) else {
            return "not an IPv4 or IPv6 socket (getsockname)"
        }
        let address = SocketAddress(storage: storage, length: length)
        guard address.port != 0 else { return "not bound (getsockname: port 0)" }
        if let expected, expected != address, !(expected.port == 0 && expected.family == address.family) {
            return "bound to \(address), not \(expected)"
        }
        return nil
    }

    /// Whether `SO_REUSEPORT` is set on this socket.
    public var reusesPort: Bool { ((try? option(SOL_SOCKET, SO_REUSEPORT)) ?? 0) != 0 }
}
