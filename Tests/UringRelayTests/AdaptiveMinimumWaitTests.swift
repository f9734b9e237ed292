import Testing

@testable import UringRelay

/// The io_uring wait's minimum wait, adapted to the arrival rate: turns are simulated (a turn
/// lasts its minimum wait plus a fixed handling time, and takes the datagrams that arrived at a
/// steady rate meanwhile), so the adaptation is checked without a clock.
@Suite struct AdaptiveMinimumWaitTests {
    /// The defaults: `--min-wait 250us`, `--flush-interval 10ms`, 256 receive buffers, the
    /// 8 MiB socket buffer `--rcvbuf` asks for.
    static func defaults() -> AdaptiveMinimumWait {
        let configuration = RelayConfiguration(backends: [])
        return AdaptiveMinimumWait(
            floorMicroseconds: configuration.minimumWaitMicroseconds, flushIntervalNanoseconds: configuration.flushIntervalNanoseconds,
            receiveBuffers: configuration.receiveBuffers, socketBufferBytes: 8 << 20)
    }

    /// Runs `turns` turns at `rate` datagrams/s from `start` (nanoseconds), each lasting the
    /// current minimum wait and 20 µs of handling; returns when the last one ended.
    @discardableResult
    static func run(_ wait: inout AdaptiveMinimumWait, rate: UInt64, turns: Int, from start: UInt64 = 1_000_000) -> UInt64 {
        var now = start
        var owed: UInt64 = 0  // nanosecond-datagrams not yet arrived as a whole datagram
        wait.observe(datagrams: 0, end: now)
        for _ in 0..<turns {
            let period = UInt64(wait.microseconds) * 1_000 + 20_000
            now += period
            owed += period * rate
            let datagrams = owed / 1_000_000_000
            owed -= datagrams * 1_000_000_000
            wait.observe(datagrams: Int(datagrams), end: now)
        }
        return now
    }

    @Test("the bounds with the defaults: --min-wait 250us, eight times it (2 ms), at most a quarter of the flush interval; 128 datagrams, half the 256 buffers, at most 128")
    func bounds() {
        let wait = Self.defaults()
        #expect(wait.floorMicroseconds == 250)
        #expect(wait.ceilingMicroseconds == 2_000)
        #expect(wait.targetDatagrams == 128)
        #expect(wait.microseconds == 250)
        let short = AdaptiveMinimumWait(floorMicroseconds: 250, flushIntervalNanoseconds: 2_000_000, receiveBuffers: 16, socketBufferBytes: 8 << 20)
        #expect(short.ceilingMicroseconds == 500)
        #expect(short.targetDatagrams == 8)
        let many = AdaptiveMinimumWait(floorMicroseconds: 100, flushIntervalNanoseconds: 100_000_000, receiveBuffers: 4_096, socketBufferBytes: 8 << 20)
        #expect(many.ceilingMicroseconds == 800)
        #expect(many.targetDatagrams == 128)
    }

    /// A wait at the ceiling must fit the socket buffer at 1 M datagrams/s of ~2 KiB: the buffer
    /// bounds the ceiling to `--rcvbuf` / 1 024 µs, never below `--min-wait`.
    @Test(
        "the socket buffer bounds the ceiling to --rcvbuf / 1 KiB µs: no adaptation with the 208 KiB of the default rmem_max, 2 ms from 2 MiB",
        arguments: [
            (0, 250), (208 << 10, 250), (250 << 10, 250), (256 << 10, 256), (300 << 10, 300), (512 << 10, 512), (1 << 20, 1_024),
            (2 << 20, 2_000), (8 << 20, 2_000),
        ] as [(Int, UInt32)])
    func bufferBoundsCeiling(socketBufferBytes: Int, ceiling: UInt32) {
        var wait = AdaptiveMinimumWait(
            floorMicroseconds: 250, flushIntervalNanoseconds: 10_000_000, receiveBuffers: 256, socketBufferBytes: socketBufferBytes)
        #expect(wait.ceilingMicroseconds == ceiling)
        // At 10 000 datagrams/s (128 would take 12.8 ms) the wait goes to the ceiling and no further.
        Self.run(&wait, rate: 10_000, turns: 30)
        #expect(wait.microseconds == ceiling)
    }

    /// At a steady rate the wait settles where one turn gathers `targetDatagrams`, within the bounds.
    @Test(
        "at a steady rate the minimum wait settles where one wake-up gathers 128 datagrams, within its bounds",
        arguments: [5_000, 50_000, 100_000, 200_000, 400_000, 2_000_000] as [UInt64])
    func settles(rate: UInt64) {
        var wait = Self.defaults()
        Self.run(&wait, rate: rate, turns: 40)
        // The turn (wait and handling) that gathers 128 datagrams: 128 / rate, clamped.
        let wanted = Int64(128_000_000 / rate)
        let expected = min(max(wanted, 250), 2_000)
        #expect(abs(Int64(wait.microseconds) - expected) <= 8, "rate \(rate): \(wait.microseconds) µs, expected ~\(expected)")
    }

    @Test("when the rate rises the minimum wait falls back to --min-wait at the first turn that sees it")
    func fallsBack() {
        var wait = Self.defaults()
        let end = Self.run(&wait, rate: 20_000, turns: 30)
        #expect(wait.microseconds == 2_000)
        Self.run(&wait, rate: 1_000_000, turns: 1, from: end)
        #expect(wait.microseconds == 250)
    }

    @Test("when the rate falls the minimum wait lengthens by half the way each turn, not at once")
    func lengthensGradually() {
        var wait = Self.defaults()
        let end = Self.run(&wait, rate: 1_000_000, turns: 10)
        #expect(wait.microseconds == 250)
        Self.run(&wait, rate: 20_000, turns: 1, from: end)
        #expect(wait.microseconds == 1_125)
    }

    @Test("a wait that took no datagram (a send, a timer, a command) leaves the minimum wait as it was")
    func emptyWaitsChangeNothing() {
        var wait = Self.defaults()
        let end = Self.run(&wait, rate: 100_000, turns: 30)
        let settled = wait.microseconds
        #expect(settled > 250)
        for turn in 1...20 { wait.observe(datagrams: 0, end: end + UInt64(turn) * 10_000_000) }
        #expect(wait.microseconds == settled)
    }

    @Test("--min-wait 0 (no minimum wait) and a flush interval of four --min-waits leave nothing to adapt")
    func adaptationOff() {
        var off = AdaptiveMinimumWait(floorMicroseconds: 0, flushIntervalNanoseconds: 10_000_000, receiveBuffers: 128, socketBufferBytes: 8 << 20)
        Self.run(&off, rate: 10_000, turns: 20)
        #expect(off.microseconds == 0)
        var tight = AdaptiveMinimumWait(floorMicroseconds: 250, flushIntervalNanoseconds: 1_000_000, receiveBuffers: 128, socketBufferBytes: 8 << 20)
        #expect(tight.ceilingMicroseconds == 250)
        Self.run(&tight, rate: 10_000, turns: 20)
        #expect(tight.microseconds == 250)
    }

    @Test("an open batch's flush deadline bounds the minimum wait, never below --min-wait")
    func flushDeadlineBounds() {
        var wait = Self.defaults()
        Self.run(&wait, rate: 10_000, turns: 30)
        #expect(wait.microseconds == 2_000)
        #expect(wait.minimum(flushDue: nil) == 2_000)
        #expect(wait.minimum(flushDue: 5_000_000) == 2_000)
        #expect(wait.minimum(flushDue: 1_500_000) == 1_500)
        #expect(wait.minimum(flushDue: 600_000) == 600)
        #expect(wait.minimum(flushDue: 100_000) == 250)
        #expect(wait.minimum(flushDue: 0) == 250)
    }
}
