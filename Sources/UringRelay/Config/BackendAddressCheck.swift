import RelayKernel

/// The rules a backend's resolved address must meet, whatever its spelling: one statsd at one
/// unicast address that is not one of this relay's own listeners, and no two backends at one
/// address. Checked at start-up (a breach exits 64 naming the backend) and for every address a
/// DNS refresh brings (a breach keeps the old address and is logged).
///
/// Addresses are compared resolved and canonical (`SocketAddress.canonical`), so `127.1`,
/// `0x7f000001`, `localhost` and `[::ffff:127.0.0.1]` are all `127.0.0.1`.
public enum BackendAddressCheck {
    /// Why `address` cannot be a backend, or `nil` when it can.
    ///
    /// - Refused: the unspecified address (`0.0.0.0`, `::`: Linux delivers it to this host);
    ///   a multicast group (it may hold several statsd daemons or none, so a metric would be
    ///   counted in several places or nowhere, and no refusal ever comes back); a broadcast
    ///   address (`255.255.255.255`, or a local network's, which the kernel refuses to connect
    ///   to); an IPv6 link-local address without its interface.
    /// - Not refused: a destination without a route now (`ENETUNREACH`): the backend socket's
    ///   own `connect` reports it at start-up, and a route may come later.
    public static func unusable(_ address: SocketAddress) -> String? {
        let canonical = address.canonical
        if canonical.isUnspecified {
            return "the unspecified address \(canonical.host) is not a destination (Linux delivers it to this host)"
        }
        if canonical.isMulticast {
            return "\(canonical.host) is a multicast group: a metric must go to exactly one statsd, and a group may"
                + " hold several or none; give each backend's own unicast address"
        }
        if canonical.isLimitedBroadcast {
            return "\(canonical.host) is the broadcast address: a metric must go to exactly one statsd, not to every host of a network"
        }
        if canonical.isLinkLocal && canonical.scopeID == 0 {
            return "\(canonical.host) is link-local and needs its interface: write [\(canonical.host)%INTERFACE]:\(canonical.port)"
        }
        switch canonical.connectFailure() {
        case Errno.permissionDenied?:
            return "\(canonical.host) is the broadcast address of a network this host is on: a metric must go to exactly"
                + " one statsd, not to every host of a network"
        case Errno.invalidArgument?:
            return "the kernel refuses \(canonical.description) as a destination (connect: Invalid argument)"
        default:
            return nil
        }
    }

    /// Which of `listeners` a datagram sent to `address` would reach, or `nil`.
    ///
    /// A listener bound to one address is reached by that address only; one bound to a
    /// wildcard (`0.0.0.0`, `::`) by every address of this host on its port: `127.0.0.0/8`,
    /// `::1` and every interface's addresses (`SocketAddress.localAddresses`), and, for `::`,
    /// this host's IPv4 addresses too unless `net.ipv6.bindv6only` is set.
    /// - Parameters:
    ///   - local: this host's addresses, when the caller has them already.
    public static func reachedListener(
        from address: SocketAddress, listeners: [SocketAddress], local: [SocketAddress]? = nil
    ) -> SocketAddress? {
        let target = address.canonical
        var localAddresses = local
        for listener in listeners {
            let bound = listener.canonical
            guard bound.port == target.port else { continue }
            if bound.sameHost(as: target) { return listener }
            guard bound.isUnspecified else { continue }
            guard bound.family == target.family
                || (bound.family == .ipv6 && target.family == .ipv4 && SocketAddress.ipv6WildcardAcceptsIPv4) else { continue }
            if target.isLoopback || target.isUnspecified { return listener }
            if localAddresses == nil { localAddresses = SocketAddress.localAddresses() }
            if localAddresses!.contains(where: { $0.sameHost(as: target) }) { return listener }
        }
        return nil
    }

    /// Checks every backend's address at start-up, in routing order.
    ///
    /// - Parameters:
    ///   - backends: the backends as written.
    ///   - addresses: where each resolved to (the same order).
    ///   - listeners: the relay's UDP listening addresses; a listener with port 0 is skipped (its
    ///     port is not known until it is bound).
    ///   - tcpListeners: the relay's TCP ingest listeners, likewise.
    ///   - sendProtocol: the transport of a backend written without a scheme.
    ///   - healthCheck: the health check and `--health-check-port`: a check that would connect
    ///     to one of `tcpListeners` is refused too (`checkedListener`).
    /// - Throws: `ConfigurationError` for argument `backend` naming the first backend whose
    ///   address is unusable, reaches a listener of its own transport, is the address of an
    ///   earlier backend (both named), or whose health check connects to this relay.
    public static func verify(
        backends: [BackendAddress], addresses: [SocketAddress], listeners: [SocketAddress],
        tcpListeners: [SocketAddress] = [], sendProtocol: BackendTransport = .udp,
        healthCheck: (mode: HealthCheckMode, port: UInt16?) = (.none, nil)
    ) throws(ConfigurationError) {
        let own = OwnListeners(udp: listeners.filter { $0.port != 0 }, tcp: tcpListeners.filter { $0.port != 0 })
        let local = SocketAddress.localAddresses()
        for index in backends.indices {
            if let reason = refusal(
                of: addresses[index], for: index, backends: backends, addresses: addresses, listeners: own,
                sendProtocol: sendProtocol, healthCheck: healthCheck, local: local
            ) {
                let written = backends[index]
                let value = (written.transport ?? sendProtocol) == .tcp ? written.withScheme : written.description
                throw ConfigurationError(argument: "backend", value: value, reason: reason)
            }
        }
    }

    /// `verify` for the mirror pool's backends (no health checks), a refusal named as
    /// `--mirror`'s.
    public static func verify(
        mirror backends: [BackendAddress], addresses: [SocketAddress], listeners: [SocketAddress],
        tcpListeners: [SocketAddress], sendProtocol: BackendTransport
    ) throws(ConfigurationError) {
        do {
            try verify(backends: backends, addresses: addresses, listeners: listeners, tcpListeners: tcpListeners, sendProtocol: sendProtocol)
        } catch {
            throw ConfigurationError(argument: "--mirror", value: error.value, reason: error.reason)
        }
    }

    /// Which of `tcpListeners` the health check of `backend` at `address` connects to, or
    /// `nil`: under `tcp` or `statsd-admin`, the backend's host at its own `health-check-port`,
    /// else `--health-check-port`, else the mode's port. Such a check would pass or fail with
    /// this relay (`tcp`: always up; `statsd-admin`: the relay reads `health` as a line and never
    /// answers, so down), whatever the statsd does.
    public static func checkedListener(
        backend: BackendAddress, address: SocketAddress, healthCheck: (mode: HealthCheckMode, port: UInt16?),
        tcpListeners: [SocketAddress], local: [SocketAddress]? = nil
    ) -> SocketAddress? {
        guard healthCheck.mode != .none, !tcpListeners.isEmpty else { return nil }
        var target = address
        target.port = backend.healthCheckPort ?? healthCheck.port ?? healthCheck.mode.defaultPort(backendPort: backend.port)
        return reachedListener(from: target, listeners: tcpListeners, local: local)
    }

    /// The relay's own listening addresses, by transport: a backend loops back to the relay only
    /// through a listener of its own transport (a UDP datagram never reaches a TCP listener on the
    /// same port, nor a TCP connection a UDP socket).
    public struct OwnListeners: Sendable, Equatable {
        /// The UDP listeners.
        public var udp: [SocketAddress]
        /// The TCP ingest listeners.
        public var tcp: [SocketAddress]

        public init(udp: [SocketAddress] = [], tcp: [SocketAddress] = []) {
            self.udp = udp
            self.tcp = tcp
        }
    }

    /// Why `address` cannot be backend `index`'s, given the other backends' addresses and the
    /// listeners, or `nil` when it can: unusable (`unusable`), reaching a listener of the
    /// backend's transport (`reachedListener`), another backend's address, or checked by a
    /// health check that would connect to a TCP listener (`checkedListener`).
    ///
    /// - Parameters:
    ///   - address: the candidate address of backend `index`.
    ///   - addresses: every backend's address; entry `index` is ignored.
    ///   - listeners: the relay's own listeners; a UDP backend is compared with the UDP ones, a
    ///     TCP backend (`tcp://`, or no scheme with `sendProtocol` TCP) with the TCP ones.
    ///   - healthCheck: the health check and `--health-check-port`: one that would connect to a
    ///     TCP listener is a refusal too (`checkedListener`).
    ///   - earlierOnly: compare with the backends before `index` only (start-up, so the
    ///     message names the first of the two).
    public static func refusal(
        of address: SocketAddress, for index: Int, backends: [BackendAddress], addresses: [SocketAddress],
        listeners: OwnListeners, sendProtocol: BackendTransport = .udp,
        healthCheck: (mode: HealthCheckMode, port: UInt16?) = (.none, nil), local: [SocketAddress]? = nil, earlierOnly: Bool = true
    ) -> String? {
        // Say where a name (or an unusual spelling of an address) led.
        let written = SocketAddress(numericHost: backends[index].host, port: address.port)?.canonical
        let resolvedNote = written.map { $0.sameHost(as: address.canonical) } == true ? "" : " (resolved to \(address.canonical))"
        if let reason = unusable(address) { return reason + resolvedNote }
        let overTCP = (backends[index].transport ?? sendProtocol) == .tcp
        if let listener = reachedListener(from: address, listeners: overTCP ? listeners.tcp : listeners.udp, local: local) {
            let named = overTCP ? "TCP listener tcp:\(listener)" : "listener \(listener)"
            return "reaches this relay's own \(named)\(resolvedNote): every line sent to it would come back"
                + " to the relay and be relayed again, forever; give the address of a statsd, not of this relay"
        }
        let others = earlierOnly ? Array(addresses.indices.prefix(index)) : addresses.indices.filter { $0 != index }
        for other in others where addresses[other].canonical == address.canonical {
            return "same address as backend \(other + 1) ('\(backends[other])'): both are \(address.canonical);"
                + " give each backend once"
        }
        if let listener = checkedListener(
            backend: backends[index], address: address, healthCheck: healthCheck, tcpListeners: listeners.tcp, local: local
        ) {
            return "its health check (--health-check \(healthCheck.mode.rawValue)) would connect to this relay's own TCP"
                + " listener tcp:\(listener)\(resolvedNote) and check this relay, not the statsd; give the backend a"
                + " health-check-port of its statsd, or --health-check-port"
        }
        return nil
    }
}
