import RelayKernel

/// MD5 (RFC 1321), for the hash rings of the `etsy` and `ketama` modes: both place servers and
/// keys by the first bytes of an MD5 digest, so routing like them needs MD5 itself.
///
/// Our own rather than swift-crypto's `Insecure.MD5`: that one builds BoringSSL (minutes of C on
/// a small build host) and links Foundation for a function of a hundred lines, and takes its
/// input as `DataProtocol`, so a key lent as a `RawSpan` would need an unsafe pointer outside
/// RelayKernel. This one reads a `RawSpan` through bounds-checked spans, allocates nothing, and
/// is checked against RFC 1321's suite and Python's `hashlib.md5` (Tests/Vectors).
///
/// Not for anything that needs a secure hash: MD5 has been broken for collisions since 2004.
/// Here it only has to agree with the peers' rings.
public enum MD5 {
    /// A digest: the algorithm's four state words A, B, C, D. The 16-byte digest is each word
    /// little-endian, in that order, so `a` is also the digest's first 4 bytes read
    /// little-endian: the value the rings use.
    public struct Digest: Sendable, Equatable, CustomStringConvertible {
        public var a: UInt32
        public var b: UInt32
        public var c: UInt32
        public var d: UInt32

        /// Digest bytes `4 * index ..< 4 * index + 4` read little-endian (`index` 0-3).
        @inline(__always)
        public func word(_ index: Int) -> UInt32 {
            switch index {
            case 0: a
            case 1: b
            case 2: c
            default: d
            }
        }

        /// The 16 digest bytes.
        public var bytes: [UInt8] {
            [a, b, c, d].flatMap { word in (0..<4).map { UInt8(truncatingIfNeeded: word >> (8 * $0)) } }
        }

        /// The digest as 32 lowercase hex digits, as `md5sum` prints it.
        public var description: String {
            bytes.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
        }
    }

    /// The 16 little-endian words of one 64-byte block.
    struct Block {
        var w0, w1, w2, w3, w4, w5, w6, w7, w8, w9, w10, w11, w12, w13, w14, w15: UInt32

        /// The 64 bytes of `span` from `base`.
        @inline(__always)
        init(_ span: Span<UInt8>, at base: Int) {
            (w0, w1, w2, w3) = (word(span, base), word(span, base &+ 4), word(span, base &+ 8), word(span, base &+ 12))
            (w4, w5, w6, w7) = (word(span, base &+ 16), word(span, base &+ 20), word(span, base &+ 24), word(span, base &+ 28))
            (w8, w9, w10, w11) = (word(span, base &+ 32), word(span, base &+ 36), word(span, base &+ 40), word(span, base &+ 44))
            (w12, w13, w14, w15) = (word(span, base &+ 48), word(span, base &+ 52), word(span, base &+ 56), word(span, base &+ 60))
        }

        /// A block of the padded end of the message: bytes of `span` from `base` while there
        /// are any, then 0x80 and zeros; with `bits`, the message length in bits in words 14-15.
        @inline(__always)
        init(padding span: Span<UInt8>, at base: Int, bits: UInt64?) {
            (w0, w1, w2, w3) = (tail(span, base), tail(span, base &+ 4), tail(span, base &+ 8), tail(span, base &+ 12))
            (w4, w5, w6, w7) = (tail(span, base &+ 16), tail(span, base &+ 20), tail(span, base &+ 24), tail(span, base &+ 28))
            (w8, w9, w10, w11) = (tail(span, base &+ 32), tail(span, base &+ 36), tail(span, base &+ 40), tail(span, base &+ 44))
            (w12, w13) = (tail(span, base &+ 48), tail(span, base &+ 52))
            if let bits {
                (w14, w15) = (UInt32(truncatingIfNeeded: bits), UInt32(truncatingIfNeeded: bits >> 32))
            } else {
                (w14, w15) = (tail(span, base &+ 56), tail(span, base &+ 60))
            }
        }
    }

    /// Bytes `at..<at + 4` of `span`, little-endian.
    @inline(__always)
    static func word(_ span: Span<UInt8>, _ at: Int) -> UInt32 {
        UInt32(span[at]) | UInt32(span[at &+ 1]) << 8 | UInt32(span[at &+ 2]) << 16 | UInt32(span[at &+ 3]) << 24
    }

    /// Bytes `at..<at + 4` of the padded message: `span`'s bytes, then 0x80, then zeros.
    @inline(__always)
    static func tail(_ span: Span<UInt8>, _ at: Int) -> UInt32 {
        let count = span.count
        if at &+ 4 <= count { return word(span, at) }
        if at > count { return 0 }
        var word: UInt32 = 0x80 << (8 &* UInt32(truncatingIfNeeded: count &- at))
        for byte in 0..<(count &- at) { word |= UInt32(span[at &+ byte]) << (8 &* UInt32(truncatingIfNeeded: byte)) }
        return word
    }

    /// The digest of `bytes`.
    @inline(__always)
    public static func hash(_ bytes: RawSpan) -> Digest {
        let span = Span<UInt8>(_bytes: bytes)
        let count = span.count
        var state = Digest(a: 0x6745_2301, b: 0xefcd_ab89, c: 0x98ba_dcfe, d: 0x1032_5476)
        var base = 0
        while count &- base >= 64 {
            compress(&state, Block(span, at: base))
            base &+= 64
        }
        // The rest, then 0x80, zeros to 56 bytes mod 64 and the length in bits, little-endian:
        // one block, or two when the rest leaves fewer than 8 bytes for the length.
        let bits = UInt64(count) &* 8
        if count &- base >= 56 {
            compress(&state, Block(padding: span, at: base, bits: nil))
            base &+= 64
        }
        compress(&state, Block(padding: span, at: base, bits: bits))
        return state
    }

    /// The digest of the UTF-8 bytes of `text`.
    public static func hash(_ text: String) -> Digest {
        var copy = text
        return copy.withUTF8 { hash($0.span.bytes) }
    }

    /// The first 4 bytes of the digest of `bytes`, read little-endian: a key's place on the
    /// etsy and ketama rings.
    @inline(__always)
    public static func leadingWord(_ bytes: RawSpan) -> UInt32 {
        hash(bytes).a
    }

    @inline(__always)
    private static func f(_ a: inout UInt32, _ b: UInt32, _ c: UInt32, _ d: UInt32, _ x: UInt32, _ t: UInt32, _ s: UInt32) {
        a = b &+ rotate(a &+ ((b & c) | (~b & d)) &+ x &+ t, s)
    }

    @inline(__always)
    private static func g(_ a: inout UInt32, _ b: UInt32, _ c: UInt32, _ d: UInt32, _ x: UInt32, _ t: UInt32, _ s: UInt32) {
        a = b &+ rotate(a &+ ((b & d) | (c & ~d)) &+ x &+ t, s)
    }

    @inline(__always)
    private static func h(_ a: inout UInt32, _ b: UInt32, _ c: UInt32, _ d: UInt32, _ x: UInt32, _ t: UInt32, _ s: UInt32) {
        a = b &+ rotate(a &+ (b ^ c ^ d) &+ x &+ t, s)
    }

    @inline(__always)
    private static func i(_ a: inout UInt32, _ b: UInt32, _ c: UInt32, _ d: UInt32, _ x: UInt32, _ t: UInt32, _ s: UInt32) {
        a = b &+ rotate(a &+ (c ^ (b | ~d)) &+ x &+ t, s)
    }

    @inline(__always)
    private static func rotate(_ value: UInt32, _ count: UInt32) -> UInt32 {
        (value &<< count) | (value &>> (32 &- count))
    }

    /// One block's 64 steps (RFC 1321 section 3.4): the constants are
    /// `floor(abs(sin(i + 1)) * 2^32)`, the word order and shifts the RFC's.
    @inline(__always)
    private static func compress(_ state: inout Digest, _ m: Block) {
        var (a, b, c, d) = (state.a, state.b, state.c, state.d)
        f(&a, b, c, d, m.w0, 0xd76a_a478, 7)
        f(&d, a, b, c, m.w1, 0xe8c7_b756, 12)
        f(&c, d, a, b, m.w2, 0x2420_70db, 17)
        f(&b, c, d, a, m.w3, 0xc1bd_ceee, 22)
        f(&a, b, c, d, m.w4, 0xf57c_0faf, 7)
        f(&d, a, b, c, m.w5, 0x4787_c62a, 12)
        f(&c, d, a, b, m.w6, 0xa830_4613, 17)
        f(&b, c, d, a, m.w7, 0xfd46_9501, 22)
        f(&a, b, c, d, m.w8, 0x6980_98d8, 7)
        f(&d, a, b, c, m.w9, 0x8b44_f7af, 12)
        f(&c, d, a, b, m.w10, 0xffff_5bb1, 17)
        f(&b, c, d, a, m.w11, 0x895c_d7be, 22)
        f(&a, b, c, d, m.w12, 0x6b90_1122, 7)
        f(&d, a, b, c, m.w13, 0xfd98_7193, 12)
        f(&c, d, a, b, m.w14, 0xa679_438e, 17)
        f(&b, c, d, a, m.w15, 0x49b4_0821, 22)

        g(&a, b, c, d, m.w1, 0xf61e_2562, 5)
        g(&d, a, b, c, m.w6, 0xc040_b340, 9)
        g(&c, d, a, b, m.w11, 0x265e_5a51, 14)
        g(&b, c, d, a, m.w0, 0xe9b6_c7aa, 20)
        g(&a, b, c, d, m.w5, 0xd62f_105d, 5)
        g(&d, a, b, c, m.w10, 0x0244_1453, 9)
        g(&c, d, a, b, m.w15, 0xd8a1_e681, 14)
        g(&b, c, d, a, m.w4, 0xe7d3_fbc8, 20)
        g(&a, b, c, d, m.w9, 0x21e1_cde6, 5)
        g(&d, a, b, c, m.w14, 0xc337_07d6, 9)
        g(&c, d, a, b, m.w3, 0xf4d5_0d87, 14)
        g(&b, c, d, a, m.w8, 0x455a_14ed, 20)
        g(&a, b, c, d, m.w13, 0xa9e3_e905, 5)
        g(&d, a, b, c, m.w2, 0xfcef_a3f8, 9)
        g(&c, d, a, b, m.w7, 0x676f_02d9, 14)
        g(&b, c, d, a, m.w12, 0x8d2a_4c8a, 20)

        h(&a, b, c, d, m.w5, 0xfffa_3942, 4)
        h(&d, a, b, c, m.w8, 0x8771_f681, 11)
        h(&c, d, a, b, m.w11, 0x6d9d_6122, 16)
        h(&b, c, d, a, m.w14, 0xfde5_380c, 23)
        h(&a, b, c, d, m.w1, 0xa4be_ea44, 4)
        h(&d, a, b, c, m.w4, 0x4bde_cfa9, 11)
        h(&c, d, a, b, m.w7, 0xf6bb_4b60, 16)
        h(&b, c, d, a, m.w10, 0xbebf_bc70, 23)
        h(&a, b, c, d, m.w13, 0x289b_7ec6, 4)
        h(&d, a, b, c, m.w0, 0xeaa1_27fa, 11)
        h(&c, d, a, b, m.w3, 0xd4ef_3085, 16)
        h(&b, c, d, a, m.w6, 0x0488_1d05, 23)
        h(&a, b, c, d, m.w9, 0xd9d4_d039, 4)
        h(&d, a, b, c, m.w12, 0xe6db_99e5, 11)
        h(&c, d, a, b, m.w15, 0x1fa2_7cf8, 16)
        h(&b, c, d, a, m.w2, 0xc4ac_5665, 23)

        i(&a, b, c, d, m.w0, 0xf429_2244, 6)
        i(&d, a, b, c, m.w7, 0x432a_ff97, 10)
        i(&c, d, a, b, m.w14, 0xab94_23a7, 15)
        i(&b, c, d, a, m.w5, 0xfc93_a039, 21)
        i(&a, b, c, d, m.w12, 0x655b_59c3, 6)
        i(&d, a, b, c, m.w3, 0x8f0c_cc92, 10)
        i(&c, d, a, b, m.w10, 0xffef_f47d, 15)
        i(&b, c, d, a, m.w1, 0x8584_5dd1, 21)
        i(&a, b, c, d, m.w8, 0x6fa8_7e4f, 6)
        i(&d, a, b, c, m.w15, 0xfe2c_e6e0, 10)
        i(&c, d, a, b, m.w6, 0xa301_4314, 15)
        i(&b, c, d, a, m.w13, 0x4e08_11a1, 21)
        i(&a, b, c, d, m.w4, 0xf753_7e82, 6)
        i(&d, a, b, c, m.w11, 0xbd3a_f235, 10)
        i(&c, d, a, b, m.w2, 0x2ad7_d2bb, 15)
        i(&b, c, d, a, m.w9, 0xeb86_d391, 21)

        state.a &+= a
        state.b &+= b
        state.c &+= c
        state.d &+= d
    }
}
