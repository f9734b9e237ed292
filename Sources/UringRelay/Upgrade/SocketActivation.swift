import RelayKernel

/// Listening sockets from systemd (`deploy/statsrelay.socket`, `LISTEN_FDS`), matched to the
/// configured listeners.
///
/// Per UDP listener, systemd passes either one socket, which every worker reads (the unit as
/// shipped: see docs/operations.md, "Socket activation"), or exactly one socket per worker,
/// each with `SO_REUSEPORT`; per Unix datagram listener (`--unix-socket`, `ListenDatagram=` of
/// a path), one `AF_UNIX` `SOCK_DGRAM` socket bound to its path, which every worker reads, as
/// when the relay binds it. The sockets stay systemd's: the relay's stop closes its
/// descriptors without touching the sockets (nor a Unix socket's file), so `systemctl restart`
/// keeps them, and what arrives meanwhile waits in them for the next start.
public enum SocketActivation {
    /// Matches `passed` (address and name per socket) to `configuration`'s listeners.
    ///
    /// - Throws: `ConfigurationError` (exit 64) naming the socket or listener that does not
    ///   fit: not a bound UDP socket or Unix datagram socket, bound to an address or path no
    ///   listener has, a listener without one, or a count that is neither 1 nor `--threads`
    ///   (1 for a Unix listener: a path binds once).
    public static func listeners(
        _ passed: [(socket: SocketBox, name: String)], configuration: RelayConfiguration
    ) throws(ConfigurationError) -> InheritedListeners {
        let wanted = configuration.listenAddresses
        var byListener = Array(repeating: [SocketBox](), count: wanted.count)
        for (index, entry) in passed.enumerated() {
            let label = "LISTEN_FDS socket \(index)\(entry.name.isEmpty ? "" : " (\(entry.name))")"
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
        return inherited
    }
}
