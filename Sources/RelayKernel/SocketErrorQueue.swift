import CLiburing
import Glibc

/// What one drain of a connected UDP socket's error queue found (`IP_RECVERR`/`IPV6_RECVERR`).
///
/// With `IP_RECVERR` set, the kernel queues one entry per ICMP error about a datagram the socket
/// sent (`ip_icmp_error` in `__udp4_lib_err`, `ipv6_icmp_error` in `__udp6_lib_err`). Every such
/// error reports a datagram that was discarded on its way: the receiving host had no socket on
/// the port (port unreachable, `ECONNREFUSED`), a router could not reach the host or network,
/// the TTL ran out, or the datagram was too big for the path. Entries are counted, never logged:
/// their payload is the start of the relay's own datagram, and their ICMP header comes from the
/// network.
///
/// Measured on Linux 6.18, loopback, to a port with nothing listening:
/// - each accepted datagram gets exactly one entry (1 000 sends, drained after each: 1 000);
/// - the kernel also sets the socket's pending error (`sk_err`), so the *next* send fails with
///   `ECONNREFUSED` and is not transmitted, unless the queue was drained first: taking the last
///   ICMP entry clears the pending error (`sock_dequeue_err_skb`), and then every send succeeds;
/// - a batch of sends in one kernel entry (one `io_uring_enter` with 16–200 `send` SQEs, or a
///   loop of `send(2)`) alternates: accepted, refused (`ECONNREFUSED`), accepted, … because the
///   ICMP of each accepted datagram arrives before the next send runs. The accepted ones each
///   leave one entry, so entries + failed sends = datagrams, exactly;
/// - the queue is charged to the socket's receive buffer: with the default `SO_RCVBUF`
///   (208 KiB) it holds about 255 entries for 100-byte datagrams and 166 for datagrams of
///   520 bytes or more; further entries are dropped silently (the pending error still fails the
///   next send). So drain before a socket can have ~150 refused datagrams outstanding.
public struct SocketErrorReport: Equatable, Sendable {
    /// ICMP (or ICMPv6) port unreachable: the host answered that nothing listens on the port.
    /// Each is one datagram the kernel accepted and the backend never received.
    public var refused: Int
    /// Other ICMP errors (host or network unreachable, TTL exceeded, fragmentation needed,
    /// parameter problem): each is also one datagram discarded on its way.
    public var unreachable: Int
    /// Entries of local origin (`SO_EE_ORIGIN_LOCAL`, e.g. `EMSGSIZE` when a send was too big):
    /// the send that caused them already failed, so they are not further losses.
    public var local: Int
    /// Whether the drain stopped at its limit with entries possibly left in the queue.
    public var reachedLimit: Bool

    /// A report of `refused`, `unreachable` and `local` entries.
    public init(refused: Int = 0, unreachable: Int = 0, local: Int = 0, reachedLimit: Bool = false) {
        self.refused = refused
        self.unreachable = unreachable
        self.local = local
        self.reachedLimit = reachedLimit
    }

    /// Datagrams the network reported lost: `refused + unreachable`.
    public var lostDatagrams: Int { refused + unreachable }

    /// Nothing was queued.
    public var isEmpty: Bool { refused == 0 && unreachable == 0 && local == 0 }

    /// The default bound on entries taken by one drain; twice what a default-sized queue holds.
    public static let defaultLimit = 512

    /// Enables the error queue on `descriptor`: `IP_RECVERR` for IPv4, `IPV6_RECVERR` for IPv6.
    static func enable(on descriptor: Int32, family: SocketAddress.Family) throws(Errno) {
        var one: Int32 = 1
        let (level, name) = family == .ipv6 ? (Int32(IPPROTO_IPV6), Int32(IPV6_RECVERR)) : (Int32(SOL_IP), Int32(IP_RECVERR))
        _ = try systemCall { setsockopt(descriptor, level, name, &one, socklen_t(MemoryLayout<Int32>.size)) }
    }

    /// Takes every entry off `descriptor`'s error queue, up to `limit`, and counts them.
    ///
    /// Never blocks. Taking the last ICMP entry also clears the socket's pending error, so the
    /// next send is not failed for a datagram already counted here.
    /// - Parameter limit: the most entries taken (bounds the work of one call).
    static func drain(_ descriptor: Int32, limit: Int) -> SocketErrorReport {
        var report = SocketErrorReport()
        var entry = cl_socket_error()
        for _ in 0..<limit {
            do throws(Errno) {
                _ = try systemCall { cl_take_socket_error(descriptor, &entry) }
            } catch {
                // EAGAIN: the queue is empty. Anything else (EBADF after a close) has nothing to count.
                return report
            }
            switch entry.origin {
            case cl_SO_EE_ORIGIN_ICMP, cl_SO_EE_ORIGIN_ICMP6:
                if entry.error == UInt32(ECONNREFUSED) { report.refused += 1 } else { report.unreachable += 1 }
            default:
                report.local += 1
            }
        }
        report.reachedLimit = true
        return report
    }
}
