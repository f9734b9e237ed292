/// How the kernel picks, for each datagram, which worker's socket of a listener's
/// `SO_REUSEPORT` group takes it (`--reuseport-steering`).
public enum ReusePortSteering: String, CaseIterable, Sendable {
    /// The kernel's default: a hash of the datagram's source and destination address and port.
    /// One client socket always lands on one worker, so its datagrams are relayed in the order
    /// sent, but a single busy client loads one worker however many there are.
    case hash
    /// A program attached to each listener's group (`SO_ATTACH_REUSEPORT_CBPF`) gives every
    /// datagram to a worker at random, so one busy client spreads over all of them. Two
    /// datagrams of one client can then be relayed by two workers, and reach a backend in
    /// either order (see docs/operations.md: a gauge's last value may be an earlier one).
    case random
}
