import Glibc

/// Validation and checksumming of StatsD lines in the format the load generator writes:
/// `name:value|type[|@rate][|#tag[:value],...]` with type `c`, `ms`, `g`, `s`, `h` or `d`.
public enum StatsDLine {
    /// Seed of the line hash (the FNV-1a 64-bit offset basis).
    public static let hashSeed: UInt64 = 0xcbf2_9ce4_8422_2325
    /// Multiplier of the line hash (the FNV-1a 64-bit prime).
    public static let hashPrime: UInt64 = 0x0000_0100_0000_01b3

    /// A 64-bit hash of one line without its newline, eight bytes at a time; run checksums are wrapping sums of
    /// these, so they do not depend on the order in which lines arrive. Not cryptographic: it catches damaged,
    /// lost or duplicated lines, not forged ones.
    @inline(__always)
    public static func hash(_ line: UnsafeRawBufferPointer) -> UInt64 {
        let count = line.count
        var hash = hashSeed ^ UInt64(count)
        var index = 0
        while index + 8 <= count {
            hash = (hash ^ line.loadUnaligned(fromByteOffset: index, as: UInt64.self)) &* hashPrime
            hash ^= hash >> 29
            index += 8
        }
        var tail: UInt64 = 0
        var shift: UInt64 = 0
        while index < count {
            tail |= UInt64(line[index]) << shift
            shift += 8
            index += 1
        }
        hash = (hash ^ tail) &* hashPrime
        return hash ^ (hash >> 32)
    }

    /// Bitmap of the bytes 0-63 allowed in names, set members and tag keys: `-`, `.` and `0-9`.
    static let nameLow: UInt64 = 0x03FF_6000_0000_0000
    /// Bitmap of the bytes 64-127 allowed in names: `A-Z`, `_` and `a-z`.
    static let nameHigh: UInt64 = 0x07FF_FFFE_87FF_FFFE
    /// Bit of `/` (47) in the low bitmap; tag values also allow it.
    static let slashLow: UInt64 = 1 << 47

    /// Whether `byte` is in the 128-bit set `low`/`high`; two shifts on constants beat a table in the byte loops.
    @inline(__always)
    static func isMember(_ byte: UInt8, low: UInt64, high: UInt64) -> Bool {
        let word = byte < 64 ? low : (byte < 128 ? high : 0)
        return (word >> UInt64(byte & 63)) & 1 != 0
    }

    /// Whether `byte` may appear in a metric name, a set member or a tag key.
    @inline(__always)
    static func isNameByte(_ byte: UInt8) -> Bool {
        isMember(byte, low: nameLow, high: nameHigh)
    }

    /// Each byte of a word set to `byte`.
    @inline(__always)
    static func lanes(_ byte: UInt8) -> UInt64 {
        0x0101_0101_0101_0101 &* UInt64(byte)
    }

    /// The high bit of each byte of `word` (all below 0x80) set where the byte lies in `low...high`; per byte
    /// `0x80 + x - low` and `0x80 + high - x` stay within the byte, so no borrow crosses lanes.
    @inline(__always)
    static func inRange(_ word: UInt64, _ low: UInt8, _ high: UInt8) -> UInt64 {
        let highBits: UInt64 = 0x8080_8080_8080_8080
        return ((word | highBits) &- lanes(low)) & (lanes(high | 0x80) &- word) & highBits
    }

    /// Whether all eight bytes of `word` may appear in a metric name; eight at a time, as most of a line is name.
    @inline(__always)
    static func allNameBytes(_ word: UInt64) -> Bool {
        let highBits: UInt64 = 0x8080_8080_8080_8080
        guard word & highBits == 0 else { return false }
        let punctuationOrDigit = inRange(word, 0x2D, 0x39) & ~inRange(word, 0x2F, 0x2F)
        let letter = inRange(word | lanes(0x20), 0x61, 0x7A)
        let underscore = inRange(word, 0x5F, 0x5F)
        return punctuationOrDigit | letter | underscore == highBits
    }

    /// Whether `byte` is an ASCII digit.
    @inline(__always)
    static func isDigit(_ byte: UInt8) -> Bool {
        byte &- UInt8(ascii: "0") < 10
    }

    /// Whether `line[start..<end]` is a decimal number: an optional sign when `signed`, digits, and an
    /// optional fraction with at least one digit.
    @inline(__always)
    static func isNumber(_ line: UnsafeRawBufferPointer, _ start: Int, _ end: Int, signed: Bool) -> Bool {
        var index = start
        if signed && index < end && (line[index] == UInt8(ascii: "+") || line[index] == UInt8(ascii: "-")) {
            index += 1
        }
        let integerStart = index
        while index < end && isDigit(line[index]) { index += 1 }
        guard index > integerStart else { return false }
        if index < end && line[index] == UInt8(ascii: ".") {
            index += 1
            let fractionStart = index
            while index < end && isDigit(line[index]) { index += 1 }
            guard index > fractionStart else { return false }
        }
        return index == end
    }

    /// Whether `line` (without its newline) is a well-formed line of the generator's format.
    public static func isValid(_ line: UnsafeRawBufferPointer) -> Bool {
        let end = line.count
        var index = 0
        while index + 8 <= end && allNameBytes(line.loadUnaligned(fromByteOffset: index, as: UInt64.self)) {
            index += 8
        }
        while index < end && isNameByte(line[index]) { index += 1 }
        guard index > 0, index < end, line[index] == UInt8(ascii: ":") else { return false }
        index += 1
        let valueStart = index
        while index < end && line[index] != UInt8(ascii: "|") { index += 1 }
        let valueEnd = index
        guard valueEnd > valueStart, index < end else { return false }
        index += 1
        let typeStart = index
        while index < end && line[index] != UInt8(ascii: "|") { index += 1 }
        let typeLength = index - typeStart
        let first = typeLength > 0 ? line[typeStart] : 0
        let valueOK: Bool
        switch (typeLength, first) {
        case (1, UInt8(ascii: "c")), (1, UInt8(ascii: "h")), (1, UInt8(ascii: "d")):
            valueOK = isNumber(line, valueStart, valueEnd, signed: false)
        case (1, UInt8(ascii: "g")):
            valueOK = isNumber(line, valueStart, valueEnd, signed: true)
        case (1, UInt8(ascii: "s")):
            valueOK = (valueStart..<valueEnd).allSatisfy { isNameByte(line[$0]) }
        case (2, UInt8(ascii: "m")) where line[typeStart + 1] == UInt8(ascii: "s"):
            valueOK = isNumber(line, valueStart, valueEnd, signed: false)
        default:
            return false
        }
        guard valueOK else { return false }
        var seenRate = false
        while index < end {
            index += 1
            guard index < end else { return false }
            let sectionStart = index + 1
            var sectionEnd = sectionStart
            while sectionEnd < end && line[sectionEnd] != UInt8(ascii: "|") { sectionEnd += 1 }
            switch line[index] {
            case UInt8(ascii: "@") where !seenRate:
                guard isNumber(line, sectionStart, sectionEnd, signed: false) else { return false }
                seenRate = true
            case UInt8(ascii: "#"):
                guard sectionEnd == end, areTags(line, sectionStart, end) else { return false }
            default:
                return false
            }
            index = sectionEnd
        }
        return true
    }

    /// Whether `line[start..<end]` is a comma-separated list of `key` or `key:value` tags.
    static func areTags(_ line: UnsafeRawBufferPointer, _ start: Int, _ end: Int) -> Bool {
        var index = start
        while true {
            let keyStart = index
            while index < end && isNameByte(line[index]) { index += 1 }
            guard index > keyStart else { return false }
            if index < end && line[index] == UInt8(ascii: ":") {
                index += 1
                let valueStart = index
                while index < end && isMember(line[index], low: nameLow | slashLow, high: nameHigh) { index += 1 }
                guard index > valueStart else { return false }
            }
            if index == end { return true }
            guard line[index] == UInt8(ascii: ",") else { return false }
            index += 1
        }
    }
}

/// Counts of one or more datagrams scanned line by line.
public struct LineTally: Sendable, Equatable {
    /// Lines seen, well-formed or not.
    public var lines = 0
    /// Lines that failed `StatsDLine.isValid`, empty lines included.
    public var malformed = 0
    /// Datagrams whose last byte is not a newline (their last line still counts).
    public var unterminated = 0
    /// Datagrams with no bytes at all.
    public var empty = 0
    /// Wrapping sum of `StatsDLine.hash` over the well-formed lines.
    public var checksum: UInt64 = 0

    /// Creates an empty tally.
    public init() {}

    /// Scans one datagram: every `\n`-separated line is counted, validated and, when valid, hashed.
    ///
    /// Returns the first malformed line of the datagram, if any, so a caller can keep a sample.
    @discardableResult
    public mutating func scan(_ datagram: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer? {
        let count = datagram.count
        guard count > 0, let base = datagram.baseAddress else {
            empty += 1
            return nil
        }
        var firstBad: UnsafeRawBufferPointer?
        var start = 0
        while start < count {
            let end: Int
            if let newline = memchr(base + start, Int32(UInt8(ascii: "\n")), count - start) {
                end = base.distance(to: UnsafeRawPointer(newline))
            } else {
                end = count
            }
            let line = UnsafeRawBufferPointer(rebasing: datagram[start..<end])
            lines += 1
            if StatsDLine.isValid(line) {
                checksum &+= StatsDLine.hash(line)
            } else {
                malformed += 1
                if firstBad == nil { firstBad = line }
            }
            start = end + 1
        }
        if datagram[count - 1] != UInt8(ascii: "\n") {
            unterminated += 1
        }
        return firstBad
    }
}
