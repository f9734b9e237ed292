import RelayKernel

/// Packets kept for a backend that is down (`--on-backend-down hold`), oldest first, in a
/// fixed byte ring: when a new packet does not fit, the oldest are dropped to make room.
///
/// Each entry is a header and the packet's bytes, wrapping around the end of the ring:
/// ```
/// +-------------+------------+-----------------------+
/// | length (4)  | lines (4)  | packet (length bytes) |
/// +-------------+------------+-----------------------+
/// ```
/// The storage is allocated at the first hold, so a healthy relay pays nothing for it.
public struct HoldBuffer: Sendable {
    private var storage: [UInt8] = []
    /// The byte capacity (`--hold-bytes`).
    public let capacity: Int
    private var head = 0
    private var used = 0
    /// Packets held.
    public private(set) var packets = 0
    /// Lines held.
    public private(set) var lines = 0

    private static let headerBytes = 8

    /// An empty buffer of `capacity` bytes (allocated on first use).
    public init(capacity: Int) { self.capacity = capacity }

    /// Whether nothing is held.
    public var isEmpty: Bool { packets == 0 }

    /// Holds a packet, dropping the oldest ones if needed.
    ///
    /// - Returns: whether the packet was stored, and the lines dropped: older packets' to make
    ///   room, or this packet's own if it can never fit.
    public mutating func push(_ packet: RawSpan, lines packetLines: Int) -> (stored: Bool, dropped: Int) {
        let needed = Self.headerBytes + packet.byteCount
        guard needed <= capacity else { return (false, packetLines) }
        if storage.isEmpty { storage = Array(repeating: 0, count: capacity) }
        var dropped = 0
        while capacity - used < needed {
            dropped += dropOldest()
        }
        var offset = (head + used) % capacity
        write(UInt32(packet.byteCount), at: &offset)
        write(UInt32(packetLines), at: &offset)
        let bytes = Span<UInt8>(_bytes: packet)
        for index in bytes.indices {
            storage[offset] = bytes[index]
            offset = offset + 1 == capacity ? 0 : offset + 1
        }
        used += needed
        packets += 1
        lines += packetLines
        assert(verifyInvariants())
        return (true, dropped)
    }

    /// Hands the oldest packet to `body` (in at most two pieces, as it lies in the ring) and
    /// removes it.
    ///
    /// - Returns: the packet's line count, or `nil` when empty.
    public mutating func popOldest(_ body: (RawSpan) -> Void) -> Int? {
        guard packets > 0 else { return nil }
        var offset = head
        let length = Int(read(at: &offset))
        let packetLines = Int(read(at: &offset))
        let first = min(length, capacity - offset)
        storage.withUnsafeBytes { raw in
            body(UnsafeRawBufferPointer(rebasing: raw[offset..<offset + first]).bytes)
            if first < length { body(UnsafeRawBufferPointer(rebasing: raw[0..<length - first]).bytes) }
        }
        release(Self.headerBytes + length, lines: packetLines)
        return packetLines
    }

    /// The byte length of the oldest packet, if any.
    public var oldestLength: Int? {
        guard packets > 0 else { return nil }
        var offset = head
        return Int(read(at: &offset))
    }

    private mutating func dropOldest() -> Int {
        var offset = head
        let length = Int(read(at: &offset))
        let packetLines = Int(read(at: &offset))
        release(Self.headerBytes + length, lines: packetLines)
        return packetLines
    }

    private mutating func release(_ bytes: Int, lines packetLines: Int) {
        head = (head + bytes) % capacity
        used -= bytes
        packets -= 1
        lines -= packetLines
        if packets == 0 {
            head = 0
            used = 0
        }
        assert(verifyInvariants())
    }

    private mutating func write(_ value: UInt32, at offset: inout Int) {
        for shift in stride(from: 0, to: 32, by: 8) {
            storage[offset] = UInt8(truncatingIfNeeded: value >> UInt32(shift))
            offset = offset + 1 == capacity ? 0 : offset + 1
        }
    }

    private func read(at offset: inout Int) -> UInt32 {
        var value: UInt32 = 0
        for shift in stride(from: 0, to: 32, by: 8) {
            value |= UInt32(storage[offset]) << UInt32(shift)
            offset = offset + 1 == capacity ? 0 : offset + 1
        }
        return value
    }

    /// Checks the counts; used in `assert` after every change.
    public func verifyInvariants() -> Bool {
        used >= 0 && used <= capacity && packets >= 0 && lines >= 0 && (packets > 0 || used == 0)
    }
}
