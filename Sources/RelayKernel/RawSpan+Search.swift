import CLiburing
import Glibc

extension RawSpan {
    /// The offset of the first `byte` within `range`, or `nil`: `memchr(3)`, which scans many
    /// bytes per instruction where a byte loop compares one.
    ///
    /// - Precondition: `range` lies within the span.
    @inlinable @inline(__always)
    public func firstOffset(of byte: UInt8, in range: Range<Int>) -> Int? {
        precondition(range.lowerBound >= 0 && range.upperBound <= byteCount, "search range outside the span")
        guard !range.isEmpty else { return nil }
        return withUnsafeBytes { raw in
            guard let base = raw.baseAddress, let found = memchr(base + range.lowerBound, Int32(byte), range.count) else {
                return nil
            }
            return UnsafeRawPointer(found) - base
        }
    }

    /// Whether `byte` occurs anywhere in the span.
    @inlinable @inline(__always)
    public func contains(byte: UInt8) -> Bool {
        firstOffset(of: byte, in: 0..<byteCount) != nil
    }
}
