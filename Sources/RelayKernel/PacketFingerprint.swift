import CLiburing

/// What identifies a sent datagram when an ICMP error quotes it back: its length, its first
/// 8 bytes and a hash of its first `hashedBytes` bytes. Computed for every packet sent (from
/// its send slot) and for the quote of every error-queue entry, with the same function, so a
/// refusal can be matched to the packet it reports (`match(by:)`).
///
/// An ICMP error carries the start of the offending IP datagram; the kernel hands its UDP
/// payload to the error queue as the entry's data (`ip_icmp_error`/`ipv6_icmp_error`). How much
/// is quoted depends on the host that answers: Linux quotes up to 576 bytes of IP packet in
/// all (520 bytes of UDP payload over IPv4, more over IPv6), routers following RFC 1812 as much
/// as fits in 576 bytes, old ones (RFC 792) only the UDP header, which leaves an empty quote.
/// So a quote is a prefix of its packet, of any length up to the whole packet:
///
/// ```
///  packet  |0 ....... 8 ............................ hashedBytes ........... length|
///  quote   |0 ....... 8 ........ L|                     (L < hashedBytes: head only)
///  quote   |0 ....... 8 ............................ hashedBytes ...... L|  (hash)
/// ```
/// - a quote at least `min(hashedBytes, packet length)` long is compared by hash: both hashed
///   the same bytes, the packet's first `min(hashedBytes, length)` (a `.hashed` match);
/// - a shorter quote (a stingy router) is compared on its first `min(L, 8)` bytes only (a
///   `.head` match, weaker: many packets share their first bytes);
/// - a quote longer than the packet is not of it.
///
/// A hashed match is preferred to a head match: a Linux host quotes the whole datagram up to
/// 520 bytes, so a 120-byte quote is most likely a whole 120-byte packet, not the start of a
/// 1 400-byte one that merely begins alike.
///
/// Equal packets (a hot counter repeated) have equal fingerprints: the ledger then takes the
/// oldest. Nothing is allocated; hashing reads at most `hashedBytes` bytes, a word at a time.
public struct PacketFingerprint: Sendable, Equatable, CustomStringConvertible {
    /// How many leading bytes the hash covers: nearly all of the 520 bytes a Linux host quotes
    /// over IPv4, so packets that differ anywhere in what is quoted differ here too.
    public static let hashedBytes = 512

    /// The datagram's length (for a quote: the quote's length).
    public var length: Int
    /// The first 8 bytes, little-endian, zero beyond `length`.
    public var head: UInt64
    /// A hash of the first `min(hashedBytes, length)` bytes.
    public var hash: UInt64

    /// The fingerprint of an empty datagram (or an empty quote, which matches any packet).
    public init() {
        length = 0
        head = 0
        hash = Self.hash(of: UnsafeRawBufferPointer(start: nil, count: 0))
    }

    /// The fingerprint of `bytes`.
    public init(_ bytes: RawSpan) {
        self = bytes.withUnsafeBytes { Self(unsafeBytes: $0) }
    }

    /// The fingerprint of the bytes at `bytes` (a received quote, a send slot).
    init(unsafeBytes bytes: UnsafeRawBufferPointer) {
        length = bytes.count
        if bytes.count >= 8, let base = bytes.baseAddress {
            // A sent packet's case: one load, not eight.
            head = cl_fingerprint_word(base.assumingMemoryBound(to: UInt8.self))
        } else {
            var first: UInt64 = 0
            for offset in 0..<bytes.count { first |= UInt64(bytes[offset]) << (8 * UInt64(offset)) }
            head = first
        }
        hash = Self.hash(of: UnsafeRawBufferPointer(start: bytes.baseAddress, count: min(bytes.count, Self.hashedBytes)))
    }

    /// How well a quote matches a packet, weakest first.
    public enum Match: Int, Comparable, Sendable {
        /// The quote is not of this packet.
        case none
        /// The quote is shorter than what the hash covers and its first bytes (up to 8) agree.
        case head
        /// The quote covers what the hash covers, and the hashes agree.
        case hashed

        public static func < (lhs: Match, rhs: Match) -> Bool { lhs.rawValue < rhs.rawValue }
    }

    /// How an error-queue entry quoting `quote` matches this packet (see the type's rules).
    @inline(__always)
    public func match(by quote: PacketFingerprint) -> Match {
        guard quote.length <= length else { return .none }
        if quote.length >= min(Self.hashedBytes, length) { return quote.hash == hash ? .hashed : .none }
        let compared = min(quote.length, 8)
        let mask: UInt64 = compared == 8 ? .max : (1 << (8 * UInt64(compared))) &- 1
        return (head ^ quote.head) & mask == 0 ? .head : .none
    }

    /// Whether an error-queue entry quoting `quote` can be about this packet: the quote is a
    /// prefix of it, as far as the fingerprints can tell.
    @inline(__always)
    public func couldBeQuoted(by quote: PacketFingerprint) -> Bool { match(by: quote) != .none }

    public var description: String {
        "length=\(length) head=0x\(String(head, radix: 16)) hash=0x\(String(hash, radix: 16))"
    }

    /// A 64-bit hash of `bytes`: their 8-byte little-endian words (the last zero-padded) in
    /// two CRC-32C lanes, even words in one and odd in the other, both seeded from the length
    /// (`cl_fingerprint_lanes`), then the `fmix64` finaliser of MurmurHash3 over the two.
    ///
    /// Runs once per packet sent over up to `hashedBytes` bytes, so the lanes are in C, one
    /// `crc32q` a word where the CPU has it (SSE4.2; issue 16's instructions per line). A CPU
    /// without it mixes the words by multiply-rotate instead (`cl_fingerprint_mixed`): quotes
    /// and packets are hashed in the same process, by the same function. With the CRC, a word's
    /// 64 bits go into a 32-bit lane, so two packets that differ in one lane's words only
    /// collide with odds of 2^-32; in both, about 2^-64; and a difference within any 32
    /// consecutive bits of a lane never collides (a CRC's burst guarantee). The ledger compares a quote only with
    /// the packets of its own backend still in flight, of a length the quote fits.
    @inline(__always)
    private static func hash(of bytes: UnsafeRawBufferPointer) -> UInt64 {
        let seed = UInt64(bytes.count) &* 0x9E37_79B9_7F4A_7C15
        guard let base = bytes.baseAddress else { return finalised(seed) }
        return finalised(cl_fingerprint_lanes(seed, base.assumingMemoryBound(to: UInt8.self), bytes.count))
    }

    /// MurmurHash3's `fmix64`.
    @inline(__always)
    private static func finalised(_ mixed: UInt64) -> UInt64 {
        var state = mixed
        state ^= state >> 33
        state &*= 0xFF51_AFD7_ED55_8CCD
        state ^= state >> 33
        state &*= 0xC4CE_B9FE_1A85_EC53
        state ^= state >> 33
        return state
    }
}
