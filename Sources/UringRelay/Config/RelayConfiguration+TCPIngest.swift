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
    /// `--tcp-max-connections`: 1 to 1 000 000.
    public static let tcpMaxConnectionsLimits: ClosedRange<Int> = 1...1_000_000
    /// `--tcp-idle-timeout`: 10 ms to 24 h.
    public static let tcpIdleTimeoutLimits: ClosedRange<UInt64> = 10_000_000...86_400_000_000_000

    /// Every TCP ingest listener, in listener order: `bindHost`:`tcpPort` first (with
    /// `--tcp-port`), then `tcpListeners`.
    public var tcpListenAddresses: [SocketAddress] {
        var addresses: [SocketAddress] = []
        if let tcpPort {
            addresses.append(SocketAddress(numericHost: bindHost, port: tcpPort) ?? SocketAddress(numericHost: "0.0.0.0", port: tcpPort)!)
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
