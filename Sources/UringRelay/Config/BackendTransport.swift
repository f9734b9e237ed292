/// How lines reach a backend: UDP datagrams (the default, as every StatsD relay) or a
/// persistent TCP stream of newline-ended lines.
///
/// A backend's transport is never part of its identity: `tcp://10.0.0.1:8125` and
/// `10.0.0.1:8125` are one backend for routing (every hash mode), counters and health, so
/// switching a backend's transport moves no series.
public enum BackendTransport: String, Sendable, CaseIterable, Equatable {
    /// Connected UDP sockets, one datagram per packed batch.
    case udp
    /// One persistent TCP connection per worker, the batches written back to back.
    case tcp

    /// Parses the Go StatsRelay's `-sendproto` value: `UDP` or `TCP`, in any case.
    public init?(sendProtocol text: String) {
        self.init(rawValue: text.lowercased())
    }
}
