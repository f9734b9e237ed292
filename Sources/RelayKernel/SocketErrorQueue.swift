import CLiburing
import Glibc

/// One entry of a connected UDP socket's error queue (`IP_RECVERR`/`IPV6_RECVERR`): what kind
/// of error, and which datagram it is about, as far as its quote tells (`PacketFingerprint`).
public struct SocketError: Sendable, Equatable {
    /// What the entry reports.
    public enum Kind: Sendable, Equatable {
        /// ICMP (or ICMPv6) port unreachable: the host answered that nothing listens on the
        /// port (or a firewall rejected the datagram with that answer).
        case refused
        /// Another ICMP error (host or network unreachable, TTL exceeded, fragmentation
        /// needed, parameter problem): the datagram was discarded on its way.
        case unreachable
        /// An error of local origin (`SO_EE_ORIGIN_LOCAL`, e.g. `EMSGSIZE`): the send that
        /// caused it already failed, so it is no further loss.
        case local
    }

    /// What the entry reports.
    public var kind: Kind
    /// The fingerprint of the quoted start of the datagram the error is about. Empty when the
    /// ICMP error quoted no payload, which matches any packet.
    public var quote: PacketFingerprint

    /// An entry of `kind` quoting `quote`.
    public init(_ kind: Kind, quote: PacketFingerprint = PacketFingerprint()) {
        self.kind = kind
        self.quote = quote
    }
}

/// Where a drain of an error queue delivers its entries, one at a time, oldest first.
public protocol SocketErrorSink {
    /// Takes one entry.
    mutating func take(_ error: SocketError)
}

/// What one drain of a connected UDP socket's error queue found (`IP_RECVERR`/`IPV6_RECVERR`).
///
/// With `IP_RECVERR` set, the kernel queues one entry per ICMP error about a datagram the socket
/// sent (`ip_icmp_error` in `__udp4_lib_err`, `ipv6_icmp_error` in `__udp6_lib_err`), with the
/// quoted start of that datagram as the entry's data. Every such error reports a datagram that
/// was discarded on its way: the receiving host had no socket on the port (port unreachable,
/// `ECONNREFUSED`), a router could not reach the host or network, the TTL ran out, or the
/// datagram was too big for the path. Entries are counted and matched, never logged: their
/// payload is the start of the relay's own datagram, and their ICMP header comes from the
/// network.
///
/// Measured on Linux 6.18, loopback, to a port with nothing listening:
/// - each accepted datagram gets exactly one entry (1 000 sends, drained after each: 1 000;
///   20 000 sends in 0.3 s: 20 000 — loopback is exempt from the ICMP rate limits), quoting
///   the datagram whole up to 520 bytes;
/// - the kernel also sets the socket's pending error (`sk_err`), so the *next* send fails with
///   `ECONNREFUSED` and is not transmitted, unless the queue was drained first: taking the last
///   ICMP entry clears the pending error (`sock_dequeue_err_skb`), and so does the failed send
///   itself, so sending it again succeeds;
/// - a batch of sends in one kernel entry (one `io_uring_enter` with 16–200 `send` SQEs, or a
///   loop of `send(2)`) alternates: accepted, refused (`ECONNREFUSED`), accepted, … because the
///   ICMP of each accepted datagram arrives before the next send runs. The accepted ones each
///   leave one entry, so entries + failed sends = datagrams, exactly;
/// - a local firewall rule that rejects in the output hook (`nft … reject`) fails the send
///   itself with `EPERM` and, within the global ICMP rate limit (`icmp_msgs_per_sec`, burst
///   50), also queues an entry quoting that datagram and sets the pending error;
/// - the queue is charged to the socket's receive buffer: with the default `SO_RCVBUF`
///   (208 KiB) it holds about 255 entries for 100-byte datagrams and 166 for datagrams of
///   520 bytes or more; further entries are dropped silently (the pending error still fails the
///   next send). So drain before a socket can have ~150 refused datagrams outstanding; the
///   backend sockets ask for a larger buffer (`UDPSocket.errorQueueBufferBytes`) as a margin.
public struct SocketErrorReport: Equatable, Sendable {
    /// ICMP (or ICMPv6) port unreachable entries. See `SocketError.Kind.refused`.
    public var refused: Int
    /// Other ICMP error entries. See `SocketError.Kind.unreachable`.
    public var unreachable: Int
    /// Entries of local origin. See `SocketError.Kind.local`.
    public var local: Int
    /// Whether the drain stopped at its limit with entries possibly left in the queue: nothing
    /// may be confirmed on the strength of this drain (a refusal may still be queued).
    public var reachedLimit: Bool

    /// A report of `refused`, `unreachable` and `local` entries.
    public init(refused: Int = 0, unreachable: Int = 0, local: Int = 0, reachedLimit: Bool = false) {
        self.refused = refused
        self.unreachable = unreachable
        self.local = local
        self.reachedLimit = reachedLimit
    }

    /// Nothing was queued.
    public var isEmpty: Bool { refused == 0 && unreachable == 0 && local == 0 }

    /// The default bound on entries taken by one drain; twice what a default-sized queue holds.
    public static let defaultLimit = 512

    /// The most bytes of an entry's quote read: more than any ICMP or ICMPv6 error quotes (an
    /// ICMPv6 error fits in the 1 280-byte minimum MTU).
    static let quoteCapacity = 2048

    /// Enables the error queue on `descriptor`: `IP_RECVERR` for IPv4, `IPV6_RECVERR` for IPv6.
    static func enable(on descriptor: Int32, family: SocketAddress.Family) throws(Errno) {
        var one: Int32 = 1
        let (level, name) = family == .ipv6 ? (Int32(IPPROTO_IPV6), Int32(IPV6_RECVERR)) : (Int32(SOL_IP), Int32(IP_RECVERR))
        _ = try systemCall { setsockopt(descriptor, level, name, &one, socklen_t(MemoryLayout<Int32>.size)) }
    }

    /// Takes every entry off `descriptor`'s error queue, up to `limit`, counts them and hands
    /// each to `sink`, oldest first.
    ///
    /// Never blocks, never allocates. Taking the last ICMP entry also clears the socket's
    /// pending error, so the next send is not failed for a datagram already counted here.
    /// - Parameter limit: the most entries taken (bounds the work of one call).
    static func drain<Sink: SocketErrorSink>(_ descriptor: Int32, limit: Int, into sink: inout Sink) -> SocketErrorReport {
        var report = SocketErrorReport()
        var entry = cl_socket_error()
        return withUnsafeTemporaryAllocation(byteCount: quoteCapacity, alignment: 8) { quote in
            for _ in 0..<limit {
                do throws(Errno) {
                    _ = try systemCall { cl_take_socket_error(descriptor, &entry, quote.baseAddress, quote.count) }
                } catch {
                    // EAGAIN: the queue is empty. Anything else (EBADF after a close) has nothing to count.
                    return report
                }
                let kind: SocketError.Kind
                switch entry.origin {
                case cl_SO_EE_ORIGIN_ICMP, cl_SO_EE_ORIGIN_ICMP6:
                    kind = entry.error == UInt32(ECONNREFUSED) ? .refused : .unreachable
                default:
                    kind = .local
                }
                switch kind {
                case .refused: report.refused += 1
                case .unreachable: report.unreachable += 1
                case .local: report.local += 1
                }
                let copied = min(Int(entry.quote_length), quote.count)
                // A quote cut at the buffer's end still says its packet is at least that long.
                sink.take(SocketError(kind, quote: PacketFingerprint(unsafeBytes: UnsafeRawBufferPointer(rebasing: quote[..<copied]))))
            }
            report.reachedLimit = true
            return report
        }
    }

    /// Takes every entry off `descriptor`'s error queue, up to `limit`, and only counts them.
    static func drain(_ descriptor: Int32, limit: Int) -> SocketErrorReport {
        var counter = Counter()
        return drain(descriptor, limit: limit, into: &counter)
    }

    /// Drops the entries of a drain that only counts.
    private struct Counter: SocketErrorSink {
        mutating func take(_ error: SocketError) {}
    }
}
