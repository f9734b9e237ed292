/// The io_uring wait's minimum wait, adapted to the arrival rate as a network card's interrupt
/// moderation is: at a low rate a wake-up costs as much as at a high one, so the wait is
/// lengthened until one wake-up gathers about `targetDatagrams`, between `--min-wait` and
/// `ceilingMicroseconds`.
///
/// Below saturation the multishot receive is one pending item to the kernel however many
/// datagrams wait, so it is the minimum wait, not the batch of completions asked for, that ends
/// a wait (docs/performance.md, "the minimum wait"). With `--min-wait 250us` a worker at 50 000
/// datagrams/s wakes 4 000 times a second for ~12 datagrams each; adapted, ~500 times for ~100
/// (the 2 ms ceiling; 128 would take 2.56 ms). Above `targetDatagrams` / `--min-wait` (512 000
/// datagrams/s with the defaults) the wait is `--min-wait`, as without adaptation, so at a
/// steady rate the socket buffer and the provided buffers hold one wait's arrivals as before.
/// The wait under way when the rate jumps is the adapted one, though (nothing in the kernel ends
/// it early), and takes what arrives in it: up to `ceilingMicroseconds` of the new rate, which
/// the socket buffer must hold (`bufferMicroseconds` bounds the ceiling). What it
/// costs: a datagram waits in the socket up to the adapted wait (at most `ceilingMicroseconds`,
/// 2 ms with the defaults) before it is read, where it waited up to `--min-wait`; a batch still
/// leaves by its flush deadline (the wait never outlasts the deadline by more than `--min-wait`,
/// as before, counted from the turn's `now`: the turn's own work before the wait comes on top).
struct AdaptiveMinimumWait {
    /// `--min-wait`: the shortest minimum wait, and the only one when adaptation is off.
    let floorMicroseconds: UInt32
    /// The longest: `ceilingFactor` times `--min-wait`, at most a quarter of `--flush-interval`,
    /// and at most what the socket buffer holds (`bufferMicroseconds`).
    let ceilingMicroseconds: UInt32
    /// The datagrams one wake-up should gather: half the provided buffers, at most
    /// `largestTarget`, so one wait's arrivals always fit the buffers.
    let targetDatagrams: UInt64
    /// The minimum wait for the next wait, microseconds.
    private(set) var microseconds: UInt32
    /// When the previous wait ended (monotonic nanoseconds); 0 before the first.
    private var previousEnd: UInt64 = 0

    /// How many times `--min-wait` the adapted wait may grow to. Eight (2 ms with the defaults)
    /// against four: live W1 at 50 000 datagrams/s, one worker, CPU s per million lines 1.00
    /// against 1.52, lower in each of five interleaved rounds (docs/performance.md).
    static let ceilingFactor: UInt64 = 8

    /// The most datagrams one wake-up aims at: 128 (with the default 256 receive buffers)
    /// against 64 halves the wake-ups from 256 000 datagrams/s down, at 200 000/s 0.97 against
    /// 1.12 CPU s per million lines (docs/performance.md).
    static let largestTarget = 128

    /// An adaptation between `floorMicroseconds` (`--min-wait`; 0 turns it off, as it turns off
    /// the minimum wait) and `ceilingFactor` times it, bounded by a quarter of the flush interval and by
    /// what a socket buffer of `socketBufferBytes` (`--rcvbuf` as granted) holds.
    init(floorMicroseconds: UInt32, flushIntervalNanoseconds: UInt64, receiveBuffers: Int, socketBufferBytes: Int) {
        self.floorMicroseconds = floorMicroseconds
        let ceiling = min(
            UInt64(floorMicroseconds) * Self.ceilingFactor, flushIntervalNanoseconds / 4_000,
            Self.bufferMicroseconds(socketBufferBytes: socketBufferBytes))
        ceilingMicroseconds = max(floorMicroseconds, UInt32(clamping: ceiling))
        targetDatagrams = UInt64(max(1, min(Self.largestTarget, receiveBuffers / 2)))
        microseconds = floorMicroseconds
    }

    /// How long a socket buffer of `socketBufferBytes` (`--rcvbuf` as granted; the kernel
    /// charges datagrams against twice that) takes to fill at 1 000 000 datagrams/s of ~2 KiB
    /// each, what the kernel charges for a small datagram from a network card (its `truesize`;
    /// on loopback about half): `socketBufferBytes` / 1 024 microseconds.
    ///
    /// The wait under way when the rate jumps is the adapted one, and nothing ends it early, so
    /// the adaptation never waits longer than that: a worker whose buffer is small (the start-up
    /// warning; 208 KiB under the default `net.core.rmem_max`) waits `--min-wait` as without
    /// adaptation, and risks no more than it did. 8 MiB holds 8 ms, far above the ceiling.
    static func bufferMicroseconds(socketBufferBytes: Int) -> UInt64 { UInt64(max(0, socketBufferBytes)) / 1_024 }

    /// Learns from a wait that ended at `end` having taken `datagrams`: the rate over the whole
    /// turn (from the previous wait's end) sets the next minimum wait. A wait that took none
    /// (ended by a send, a timer or a command) says nothing of the rate and changes nothing.
    mutating func observe(datagrams: Int, end: UInt64) {
        defer { previousEnd = end }
        guard datagrams > 0, previousEnd != 0, end > previousEnd, ceilingMicroseconds > floorMicroseconds else { return }
        // The wait that would gather `targetDatagrams` at this turn's rate.
        let period = end - previousEnd
        let wanted = period.multipliedReportingOverflow(by: targetDatagrams)
        let wantedMicroseconds = wanted.overflow ? UInt64.max : wanted.partialValue / (UInt64(datagrams) * 1_000)
        let current = UInt64(microseconds)
        let target = max(UInt64(floorMicroseconds), min(wantedMicroseconds, UInt64(ceilingMicroseconds)))
        // Shortened at once (a faster rate must not overfill the socket and the buffers),
        // lengthened half-way (rounded up, so the target is reached), so one slow turn does
        // not swing it.
        microseconds = UInt32(target > current ? (current + target + 1) / 2 : target)
    }

    /// The minimum wait for a wait whose next deadline is `flushDue` nanoseconds away (`nil`:
    /// none; the core always has one, its heartbeat publication): never more than `--min-wait`
    /// past that deadline.
    func minimum(flushDue: UInt64?) -> UInt32 {
        guard let flushDue, microseconds > floorMicroseconds else { return microseconds }
        return max(floorMicroseconds, min(microseconds, UInt32(clamping: flushDue / 1_000)))
    }
}
