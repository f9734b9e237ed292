import CLiburing
import Glibc

extension RawSpan {
    /// The byte at `offset`, which the caller's scan found within the span, with no bounds check
    /// (the scanner's test of every line's first byte; kept here, in the unsafe target).
    ///
    /// - Precondition: `0 <= offset < byteCount` (checked in debug builds only).
    @inlinable @inline(__always)
    public func byte(scannedAt offset: Int) -> UInt8 {
        assert(offset >= 0 && offset < byteCount, "scanned offset outside the span")
        return Span<UInt8>(_bytes: self)[unchecked: offset]
    }

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

    /// Where the line that starts at `start` stops: the offset of the first `\n`, `\r` or NUL at
    /// or after `start` (`byteCount` when there is none), whether it is a `\n` or the span's end
    /// (the common line's ending; a `\r` or NUL needs a closer look), and the offset of the first
    /// `:` before it (`nil` when there is none). One pass over the line (`cl_line_stop`, 16 bytes
    /// at a time) finds what a `\n`, a `:`, a `\r` and a NUL search each found before.
    ///
    /// - Precondition: `0 <= start <= byteCount`.
    @inlinable @inline(__always)
    public func lineStop(from start: Int) -> (stop: Int, endsAtNewline: Bool, colon: Int?) {
        let found = lineStop(from: start, hashingNameWith: nil)
        return (found.stop, found.endsAtNewline, found.colon)
    }

    /// `lineStop(from:)` that also hashes the name before the `:` with `seeds` from the blocks
    /// the scan reads (`cl_line_stop`): `nameHash` is `extracting(start..<colon).nameHash(seeds:)`
    /// when the scan could take it from them, `nil` when it could not (no `:` before the stop,
    /// fewer than 16 bytes from `start` to the span's end, `seeds` nil, or a build whose scan
    /// reads bytes one by one: `scanHashesNames` false) and the caller must.
    ///
    /// - Precondition: `0 <= start <= byteCount`.
    @inlinable @inline(__always)
    public func lineStop(from start: Int, hashingNameWith seeds: NameHashSeeds?)
        -> (stop: Int, endsAtNewline: Bool, colon: Int?, nameHash: UInt64?)
    {
        precondition(start >= 0 && start <= byteCount, "line start outside the span")
        let length = byteCount &- start
        guard length > 0 else { return (start, true, nil, nil) }
        return withUnsafeBytes { raw in
            var colon = 0
            var newline: Int32 = 0
            var hash: UInt64 = 0
            var hashed: Int32 = 0
            // `raw` is the span's own memory: non-empty here, so it has a base address.
            let line = raw.baseAddress.unsafelyUnwrapped.assumingMemoryBound(to: UInt8.self) + start
            let stop = cl_line_stop(
                line, length, &colon, &newline, seeds == nil ? 0 : 1, seeds?.seeds ?? cl_name_hash_seeds(), &hash,
                &hashed)
            // The scan read the stop's byte where it found it (`newline`): not read again here.
            return (start &+ stop, newline != 0, colon < length ? start &+ colon : nil, hashed != 0 ? hash : nil)
        }
    }

    /// The FNV-1a 64 of the span's bytes continuing from `seed` (`cl_fnv1a64`, eight bytes a
    /// turn; the FNV-1a 64 of the bytes when `seed` is the offset basis).
    @inlinable @inline(__always)
    public func fnv1a64(continuing seed: UInt64) -> UInt64 {
        guard byteCount > 0 else { return seed }
        return withUnsafeBytes { raw in
            // Non-empty, so the span's memory has a base address.
            cl_fnv1a64(seed, raw.baseAddress.unsafelyUnwrapped.assumingMemoryBound(to: UInt8.self), byteCount)
        }
    }

    /// Whether `lineStop(from:hashingNameWith:)` hashes names at all on this build (its 16-byte
    /// block scan is SSE2's).
    public static var scanHashesNames: Bool { cl_line_stop_hashes_names != 0 }

    /// A seeded 64-bit hash of the span's bytes, sixteen bytes a step (`cl_name_hash`): what the
    /// primary cache finds a name by, in about a third of FNV-1a's instructions, and what a line
    /// scan computes on the way (`lineStop(from:hashingNameWith:)`). Not a routing hash: no relay
    /// routes by it, and it changes with `seeds`.
    @inlinable @inline(__always)
    public func nameHash(seeds: NameHashSeeds) -> UInt64 {
        withUnsafeBytes { raw in
            // An empty span reads nothing: its base address is never dereferenced.
            cl_name_hash(seeds.seeds, raw.baseAddress?.assumingMemoryBound(to: UInt8.self), byteCount)
        }
    }

    /// Whether `byte` occurs anywhere in the span.
    @inlinable @inline(__always)
    public func contains(byte: UInt8) -> Bool {
        firstOffset(of: byte, in: 0..<byteCount) != nil
    }
}

/// The two secrets of a name hash (`RawSpan.nameHash(seeds:)`): drawn once per cache, so no one
/// outside the process can choose two names that share a hash.
public struct NameHashSeeds: Sendable {
    /// The seeds as the C hash takes them.
    @usableFromInline let seeds: cl_name_hash_seeds

    /// Seeds of these two values.
    @inlinable
    public init(state: UInt64, key: UInt64) {
        seeds = cl_name_hash_seeds(state: state, key: key)
    }

    /// Two random seeds.
    public static func random() -> NameHashSeeds {
        NameHashSeeds(state: UInt64.random(in: .min ... .max), key: UInt64.random(in: .min ... .max))
    }
}
