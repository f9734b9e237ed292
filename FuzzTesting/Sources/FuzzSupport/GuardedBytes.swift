import Glibc

/// A read-only copy of a fuzz input with a page that may not be touched right before or right
/// after it, so that reading even one byte outside the input (or writing to it) faults at
/// once, whether or not the target was built with AddressSanitizer.
///
/// ```
/// .after:   | data pages, read-only ......[input] | PROT_NONE |
/// .before:  | PROT_NONE | [input]...... data pages, read-only |
/// ```
/// glibc's vectorised `memchr` reads aligned blocks that may start before the input or end
/// after it, but never across a page boundary, so the guard raises no false alarm.
public struct GuardedBytes: ~Copyable {
    /// Which side of the input the inaccessible page is on.
    public enum Side: Sendable {
        case before
        case after
    }

    private let mapping: UnsafeMutableRawPointer
    private let mappingBytes: Int
    private let start: UnsafeRawPointer
    /// The input's length.
    public let count: Int

    /// Copies `input` next to a guard page on `side`.
    public init(copying input: UnsafeRawBufferPointer, guard side: Side) {
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let dataBytes = (input.count + page - 1) / page * page
        mappingBytes = dataBytes + page
        guard let memory = mmap(nil, mappingBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
              memory != MAP_FAILED else { fatalError("mmap of \(mappingBytes) bytes failed (errno \(errno))") }
        mapping = memory
        count = input.count
        let data: UnsafeMutableRawPointer
        let guardPage: UnsafeMutableRawPointer
        switch side {
        case .after:
            data = memory
            guardPage = memory + dataBytes
            // The last byte of the input is the last byte before the guard page.
            start = UnsafeRawPointer(guardPage - input.count)
        case .before:
            guardPage = memory
            data = memory + page
            start = UnsafeRawPointer(data)
        }
        if let base = input.baseAddress, input.count > 0 {
            UnsafeMutableRawPointer(mutating: start).copyMemory(from: base, byteCount: input.count)
        }
        if dataBytes > 0 { precondition(mprotect(data, dataBytes, PROT_READ) == 0, "mprotect read-only failed") }
        precondition(mprotect(guardPage, page, PROT_NONE) == 0, "mprotect of the guard page failed")
    }

    deinit {
        munmap(mapping, mappingBytes)
    }

    /// Lends the copy as a span.
    public func withSpan<Result>(_ body: (RawSpan) -> Result) -> Result {
        body(UnsafeRawBufferPointer(start: start, count: count).bytes)
    }
}
