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
    /// Each worker's socket takes the datagrams the kernel receives on the CPU that worker is
    /// pinned to (`SO_INCOMING_CPU`; Linux 6.2 on, stable 6.1.2, 6.0.16, 5.15.86), and the kernel's hash places those received
    /// on a CPU without a worker. A datagram is then read, and its buffer freed, on the CPU that
    /// received it: no cross-CPU frees or their interrupts. Clients keep their order as with
    /// `hash` while their traffic arrives on one CPU (a NIC's receive queue, or a loopback
    /// sender that stays on its CPU); one busy client still lands on one worker.
    case cpu
}
