import Testing
@testable import UringRelay

@Suite("MD5")
struct MD5Tests {
    /// RFC 1321's test suite (appendix A.5).
    @Test(arguments: [
        ("", "d41d8cd98f00b204e9800998ecf8427e"),
        ("a", "0cc175b9c0f1b6a831c399e269772661"),
        ("abc", "900150983cd24fb0d6963f7d28e17f72"),
        ("message digest", "f96b697d7cb7938d525a2f31aaf161d0"),
        ("abcdefghijklmnopqrstuvwxyz", "c3fcd3d76192e4007dfb496cca67e13b"),
        ("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789", "d174ab98d277d9f5a5611c2c9f419d9f"),
        ("12345678901234567890123456789012345678901234567890123456789012345678901234567890", "57edf4a22be3c955ac49da2e2107b67a"),
    ])
    func rfc1321(_ message: String, _ expected: String) {
        #expect(MD5.hash(message).description == expected)
    }

    /// Every length from 0 to 129 bytes (each padding case: the rest short of 56 bytes, 56-63
    /// bytes needing a second block, whole blocks) and two long ones, against `hashlib.md5`.
    @Test("lengths 0-129, 200 and 1000 bytes agree with hashlib", arguments: HashVectors.digests)
    func hashlib(_ vector: HashVectors.Digest) {
        let digest = vector.message.withUnsafeBytes { MD5.hash($0.bytes) }
        #expect(digest.description == vector.hex)
    }

    @Test("the vector file was read")
    func vectorsPresent() {
        #expect(HashVectors.digests.count == 136)
    }

    @Test("the leading word is the digest's first 4 bytes read little-endian, and the words are the digest in order")
    func words() {
        // md5("abc") = 90 01 50 98 3c d2 4f b0 d6 96 3f 7d 28 e1 7f 72 (RFC 1321).
        let digest = MD5.hash("abc")
        #expect(digest.bytes == [0x90, 0x01, 0x50, 0x98, 0x3c, 0xd2, 0x4f, 0xb0, 0xd6, 0x96, 0x3f, 0x7d, 0x28, 0xe1, 0x7f, 0x72])
        #expect((0..<4).map(digest.word) == [0x9850_0190, 0xb04f_d23c, 0x7d3f_96d6, 0x727f_e128])
        #expect(Array("abc".utf8).withUnsafeBytes { MD5.leadingWord($0.bytes) } == 0x9850_0190)
    }
}
