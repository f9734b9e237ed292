import Testing

@testable import UringRelay

/// How many receive buffers the io_uring driver keeps in circulation while the adapted wait is
/// at `--min-wait` (`IOUringDriver.buffersAtFloor`): half where the wait can adapt, all where
/// it cannot. Above the floor all circulate, whatever this says.
@Suite struct BufferCirculationPolicyTests {
    /// `--min-wait` (µs), the socket buffer granted (bytes), `--receive-buffers`, and the
    /// buffers circulating at the floor.
    static let cases: [(minimumWait: UInt32, socketBuffer: Int, buffers: Int, atFloor: Int)] = [
        (250, 8 << 20, 256, 128),  // the defaults: the 128 the relay had before the wait adapted
        (250, 8 << 20, 128, 64),
        (250, 8 << 20, 2, 1),
        (250, 8 << 20, 1, 1),  // never none
        (0, 8 << 20, 256, 256),  // --min-wait 0: nothing adapts
        (250, 208 << 10, 256, 256),  // 208 KiB holds 203 µs, below --min-wait: nothing adapts
        (250, 512 << 10, 256, 128),  // 512 µs: the wait may double
    ]

    @Test("half the buffers circulate at the floor where the wait can adapt, all where it cannot", arguments: cases)
    func atFloor(_ row: (minimumWait: UInt32, socketBuffer: Int, buffers: Int, atFloor: Int)) {
        let wait = AdaptiveMinimumWait(
            floorMicroseconds: row.minimumWait, flushIntervalNanoseconds: 10_000_000, receiveBuffers: row.buffers,
            socketBufferBytes: row.socketBuffer)
        #expect(IOUringDriver.buffersAtFloor(count: row.buffers, adaptiveWait: wait) == row.atFloor)
    }
}

/// The portable driver's `recvmmsg` batch: half of `--receive-buffers`, as many as an io_uring
/// worker circulates at saturation, at least 1 and at most 256.
@Suite struct PortableBatchTests {
    @Test(
        "the portable driver takes half the receive buffers per recvmmsg: 128 with the default 256, at least 1, at most 256",
        arguments: [(256, 128), (128, 64), (2, 1), (1, 1), (512, 256), (4_096, 256)] as [(Int, Int)])
    func batchCount(receiveBuffers: Int, batch: Int) {
        #expect(PortableDriver.batchCount(receiveBuffers: receiveBuffers) == batch)
    }

    @Test("with the default --receive-buffers the batch is the 128 datagrams it was measured with")
    func defaultBatch() {
        #expect(PortableDriver.batchCount(receiveBuffers: RelayConfiguration(backends: []).receiveBuffers) == 128)
    }
}
