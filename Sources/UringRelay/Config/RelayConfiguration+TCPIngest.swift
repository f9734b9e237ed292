import Glibc
import RelayKernel

/// TCP ingest listeners (`--tcp-port`, a `tcp:ADDR:PORT` listener): their addresses, limits and
/// checks.
extension RelayConfiguration {
    /// `--tcp-max-connections`'s default: 10 000 open connections, relay-wide (a file
    /// descriptor each: the relay's `RLIMIT_NOFILE` must leave room for them).
    public static let defaultTCPMaxConnections = 10_000
    /// `--tcp-idle-timeout`'s default: 5 minutes. Clients keep a connection open and send every
    /// flush interval (10 s for most); one silent this long has gone away without a FIN
    /// (a host that crashed, a NAT that forgot it), and its descriptor is better given back.
    public static let defaultTCPIdleTimeoutNanoseconds: UInt64 = 300_000_000_000
    /// Buffers in each io_uring worker's TCP receive group: shared by the worker's connections,
    /// 16 bytes of pinned memory each (the ring), their bytes ordinary memory.
    public static let defaultTCPReceiveBuffers = 256
    /// Each TCP receive buffer: a page, so a receive bundle of several covers what a 64 KiB
    /// client write leaves in the socket in one completion.
    public static let defaultTCPReceiveBufferBytes = 4096
    /// `--tcp-max-connections`: 1 to 1 000 000.
    public static let tcpMaxConnectionsLimits: ClosedRange<Int> = 1...1_000_000
    /// `--tcp-idle-timeout`: 10 ms to 24 h.
    public static let tcpIdleTimeoutLimits: ClosedRange<UInt64> = 10_000_000...86_400_000_000_000

    /// Every TCP ingest listener, in listener order: `bindHost`:`tcpPort` first (with
    /// `--tcp-port`; `tcpPortHost` instead once a reload moved `bindHost`), then `tcpListeners`.
    public var tcpListenAddresses: [SocketAddress] {
        var addresses: [SocketAddress] = []
        if let tcpPort {
            let host = tcpPortHost ?? bindHost
            addresses.append(SocketAddress(numericHost: host, port: tcpPort) ?? SocketAddress(numericHost: "0.0.0.0", port: tcpPort)!)
        }
        return addresses + tcpListeners
    }

    /// The most connections one of `threads` workers keeps open: `tcpMaxConnections` split
    /// evenly, rounded up (the kernel spreads connections over the workers by a hash, so
    /// neither share is exact; rounding up never refuses below the relay-wide limit because
    /// of an uneven split of fewer than `threads` connections).
    public var tcpMaxConnectionsPerWorker: Int { (tcpMaxConnections + threads - 1) / max(1, threads) }

    /// Checks the TCP ingest listeners and limits.
    func validateTCPIngest() throws(ConfigurationError) {
        let addresses = tcpListenAddresses
        for (index, address) in addresses.enumerated() where address.port != 0 {
            if let first = addresses[..<index].firstIndex(where: { $0.canonical == address.canonical }) {
                throw ConfigurationError(
                    argument: "listeners", value: "tcp:\(address)",
                    reason: "same TCP address as tcp:\(addresses[first]): give each listener once")
            }
        }
        if tcpReceiveBuffers < 1 || tcpReceiveBuffers > 32_768 || tcpReceiveBuffers & (tcpReceiveBuffers - 1) != 0 {
            throw ConfigurationError(argument: "tcp receive buffers", value: "\(tcpReceiveBuffers)", reason: "must be a power of two from 1 to 32768")
        }
        if tcpReceiveBufferBytes < 1 || tcpReceiveBufferBytes > 1 << 20 {
            throw ConfigurationError(argument: "tcp receive buffer bytes", value: "\(tcpReceiveBufferBytes)", reason: "must be 1 byte to 1 MiB")
        }
        if !Self.tcpMaxConnectionsLimits.contains(tcpMaxConnections) {
            throw ConfigurationError(argument: "--tcp-max-connections", value: "\(tcpMaxConnections)", reason: "must be 1-1000000")
        }
        if !Self.tcpIdleTimeoutLimits.contains(tcpIdleTimeoutNanoseconds) {
            throw ConfigurationError(
                argument: "--tcp-idle-timeout", value: DurationParser.format(tcpIdleTimeoutNanoseconds),
                reason: DurationParser.describe(Self.tcpIdleTimeoutLimits))
        }
    }
}

/// How the io_uring driver reads its TCP ingest connections (the portable driver always reads
/// them through epoll).
public enum TCPReceiveMode: String, Sendable, Equatable {
    /// A multishot `recv` per connection into the TCP buffer group, with receive bundles where
    /// the kernel has them (`IORING_FEAT_RECVSEND_BUNDLE`, Linux 6.10).
    case auto
    /// A multishot `recv` per connection, one buffer per completion, even where bundles exist.
    case multishot
    /// Non-blocking `recv(2)` calls on the connections epoll reports ready, as the portable
    /// driver reads them (the way to compare the two in a benchmark).
    case epoll

    /// `STATSRELAY_TCP_RECEIVE` (`auto`, `multishot` or `epoll`) when set to one of them, else
    /// `auto`: a benchmark's switch, not an operator's setting.
    public static var fromEnvironment: TCPReceiveMode {
        guard let value = getenv("STATSRELAY_TCP_RECEIVE") else { return .auto }
        return TCPReceiveMode(rawValue: String(cString: value)) ?? .auto
    }
}
