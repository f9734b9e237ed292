import RelayKernel

/// Listening sockets from systemd (`deploy/statsrelay.socket`, `LISTEN_FDS`), matched to the
/// configured listeners.
///
/// Per UDP listener, systemd passes either one socket, which every worker reads (the unit as
/// shipped: see docs/operations.md, "Socket activation"), or exactly one socket per worker,
/// each with `SO_REUSEPORT`; per Unix datagram listener (`--unix-socket`, `ListenDatagram=` of
/// a path), one `AF_UNIX` `SOCK_DGRAM` socket bound to its path, which every worker reads, as
/// when the relay binds it; per TCP ingest listener (`--tcp-port`, `tcp:` listeners;
/// `ListenStream=`), one listening socket every worker accepts on, or one per worker, each with
/// `SO_REUSEPORT` (a TCP listener systemd passes nothing for is bound by the relay, unless
/// systemd passes another TCP listener's: then every one must come). The sockets stay systemd's: the relay's stop closes its
/// descriptors without touching the sockets (nor a Unix socket's file), so `systemctl restart`
/// keeps them, and what arrives meanwhile waits in them for the next start.
public enum SocketActivation {
    /// Matches `passed` (address and name per socket) to `configuration`'s listeners.
    ///
    /// - Throws: `ConfigurationError` (exit 64) naming the socket or listener that does not
    ///   fit: connected (`getpeername` succeeds), not a bound UDP socket, Unix datagram socket
    ///   or listening TCP socket, bound to an
    ///   address or path no listener has, a listener without one, or a count that is neither 1
    ///   nor `--threads` (1 for a Unix listener: a path binds once).
    public static func listeners(
        _ passed: [(socket: SocketBox, name: String)], configuration: RelayConfiguration
    ) throws(ConfigurationError) -> InheritedListeners {
        let wanted = configuration.listenAddresses
        let wantedTCP = configuration.tcpListenAddresses
        var byListener = Array(repeating: [SocketBox](), count: wanted.count)
        var byTCPListener = Array(repeating: [SocketBox](), count: wantedTCP.count)
        for (index, entry) in passed.enumerated() {
            let label = "LISTEN_FDS socket \(index)\(entry.name.isEmpty ? "" : " (\(entry.name))")"
            // A connected socket takes only its peer's datagrams: one a relay stopped connects to
            // itself and takes none, so every datagram to its address would be lost uncounted.
            if let peer = entry.socket.socket.peerAddress {
                throw ConfigurationError(
                    argument: "LISTEN_FDS", value: label,
                    reason: "descriptor \(entry.socket.socket.descriptor) is connected to \(peer): a listener's socket takes datagrams from any sender; restart the socket unit (systemctl restart statsrelay.socket) to get a fresh one")
            }
            if TCPListenSocket.isStream(entry.socket), TCPListenSocket.boundAddress(of: entry.socket) != nil {
                // ListenStream= of an IP address: a TCP ingest listener's (a Unix stream
                // socket is refused below, as no datagram socket).
                if let problem = TCPListenSocket.listenerMismatch(entry.socket, expected: nil, requiringReusePort: false) {
                    throw ConfigurationError(argument: "LISTEN_FDS", value: label, reason: problem)
                }
                let bound = TCPListenSocket.boundAddress(of: entry.socket)!
                guard let listener = wantedTCP.firstIndex(of: bound) else {
                    throw ConfigurationError(
                        argument: "LISTEN_FDS", value: label,
                        reason: "a TCP socket bound to \(bound), which no TCP listener is (tcp listeners: \(wantedTCP.isEmpty ? "none; add --tcp-port or a tcp: listener" : wantedTCP.map(\.description).joined(separator: ", ")))")
                }
                byTCPListener[listener].append(entry.socket)
                continue
            }
            // A Unix socket is checked against its own path (any listener's, if none is bound
            // to it: refused below, naming the path).
            let bound = entry.socket.socket.localAddress
            let expected: SocketAddress? = bound.family == .unix ? bound : nil
            if let problem = entry.socket.socket.listenerMismatch(expected: expected, requiringReusePort: false) {
                throw ConfigurationError(argument: "LISTEN_FDS", value: label, reason: problem)
            }
            guard let listener = wanted.firstIndex(of: bound) else {
                throw ConfigurationError(
                    argument: "LISTEN_FDS", value: label,
                    reason: "bound to \(bound), which no listener is (listeners: \(wanted.map(\.description).joined(separator: ", ")))")
            }
            byListener[listener].append(entry.socket)
        }
        var sockets: [[SocketBox]] = []
        for (address, list) in zip(wanted, byListener) {
            switch list.count {
            case _ where address.family == .unix && list.count > 1:
                throw ConfigurationError(
                    argument: "LISTEN_FDS", value: "\(address)",
                    reason: "\(list.count) sockets passed for this Unix listener: expected 1 (a path binds once; every worker reads it)")
            case 1:
                sockets.append(Array(repeating: list[0], count: configuration.threads))
            case configuration.threads:
                for socket in list where !socket.socket.reusesPort {
                    throw ConfigurationError(
                        argument: "LISTEN_FDS", value: "\(address)",
                        reason: "\(list.count) sockets for one listener need ReusePort=yes (\(socket.socket.localAddress) has no SO_REUSEPORT)")
                }
                sockets.append(list)
            default:
                throw ConfigurationError(
                    argument: "LISTEN_FDS", value: "\(address)",
                    reason: "\(list.count) sockets passed for this listener: expected 1 (read by every worker) or one per worker (\(configuration.threads))")
            }
        }
        var inherited = InheritedListeners(addresses: wanted, sockets: sockets)
        inherited.heldElsewhere = true
        // A TCP listener systemd passed nothing for is bound by the relay; either all come from
        // systemd or none (the list is by listener).
        if byTCPListener.contains(where: { !$0.isEmpty }) {
            for (address, list) in zip(wantedTCP, byTCPListener) {
                switch list.count {
                case 1:
                    inherited.tcpSockets.append(Array(repeating: list[0], count: configuration.threads))
                case configuration.threads:
                    for socket in list where !socket.socket.reusesPort {
                        throw ConfigurationError(
                            argument: "LISTEN_FDS", value: "tcp:\(address)",
                            reason: "\(list.count) sockets for one TCP listener need ReusePort=yes (one has no SO_REUSEPORT)")
                    }
                    inherited.tcpSockets.append(list)
                default:
                    throw ConfigurationError(
                        argument: "LISTEN_FDS", value: "tcp:\(address)",
                        reason: "\(list.count) sockets passed for this TCP listener: expected 1 (accepted on by every worker) or one per worker (\(configuration.threads)); when systemd passes any TCP listener's, it passes every one's")
                }
                inherited.tcpAddresses.append(address)
            }
        }
        return inherited
    }
}
