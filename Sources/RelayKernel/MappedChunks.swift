import CLiburing
import Glibc

/// Equal-sized chunks of anonymous memory, each its own `mmap(2)`, named by small integer ids.
///
/// Memory the relay must give back to the system when it is no longer needed (held packets of a
/// backend that recovered) lives here rather than in the heap: glibc's `malloc` keeps freed heap
/// memory in the process, while `munmap(2)` returns it at once. A new chunk costs one `mmap` and
/// no zero-fill up front: the kernel supplies zeroed pages on first touch, one page at a time, so
/// mapping never stalls the thread for longer than a system call.
///
/// ```
/// id 0 ─► [ chunkBytes ]     ids are reused after unmap(_:);
/// id 1 ─► (unmapped)         an unmapped id holds no memory
/// id 2 ─► [ chunkBytes ]
/// ```
///
/// Every offset is checked against `chunkBytes`; callers never see a pointer.
public struct MappedChunks: ~Copyable {
    /// Bytes per chunk, a multiple of the page size.
    public let chunkBytes: Int
    private var bases: [UnsafeMutableRawPointer?] = []
    private var freeIDs: [Int] = []
    /// How many chunks are mapped now.
    public private(set) var mappedCount = 0

    /// The system's page size.
    public static var pageBytes: Int { Int(sysconf(Int32(_SC_PAGESIZE))) }

    /// An empty table of chunks of `chunkBytes` each; nothing is mapped yet.
    ///
    /// - Precondition: `chunkBytes` is a positive multiple of the page size.
    public init(chunkBytes: Int) {
        precondition(chunkBytes > 0 && chunkBytes % Self.pageBytes == 0, "chunk size must be a multiple of the page size")
        self.chunkBytes = chunkBytes
    }

    deinit {
        for base in bases { if let base { munmap(base, chunkBytes) } }
    }

    /// Maps one chunk and returns its id (a freed id when there is one). Its bytes read as zero.
    ///
    /// The id table grows (a heap allocation) only when more chunks are mapped at once than
    /// ever before.
    ///
    /// - Throws: the `mmap(2)` error (`ENOMEM`).
    public mutating func map() throws(Errno) -> Int {
        guard let memory = mmap(nil, chunkBytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0),
              memory != MAP_FAILED else { throw Errno.current }
        mappedCount += 1
        if let id = freeIDs.popLast() {
            bases[id] = memory
            return id
        }
        bases.append(memory)
        return bases.count - 1
    }

    /// Unmaps chunk `id`: its memory leaves the process now.
    ///
    /// - Precondition: `id` is mapped.
    public mutating func unmap(_ id: Int) {
        let base = address(of: id)
        munmap(base, chunkBytes)
        bases[id] = nil
        freeIDs.append(id)
        mappedCount -= 1
    }

    /// Copies `bytes` into chunk `id` at `offset`.
    ///
    /// - Precondition: `offset + bytes.byteCount <= chunkBytes`.
    public mutating func copy(_ bytes: RawSpan, into id: Int, at offset: Int) {
        let count = bytes.byteCount
        precondition(offset >= 0 && offset + count <= chunkBytes, "write past the end of a chunk")
        let destination = address(of: id) + offset
        bytes.withUnsafeBytes { source in
            if let start = source.baseAddress { destination.copyMemory(from: start, byteCount: count) }
        }
    }

    /// Stores `value` (native byte order) in chunk `id` at `offset`.
    ///
    /// - Precondition: `offset` is 4-byte aligned and the value lies inside the chunk.
    public mutating func store(_ value: UInt32, into id: Int, at offset: Int) {
        precondition(offset >= 0 && offset % 4 == 0 && offset + 4 <= chunkBytes, "misplaced store in a chunk")
        address(of: id).storeBytes(of: value, toByteOffset: offset, as: UInt32.self)
    }

    /// The `UInt32` stored in chunk `id` at `offset`.
    ///
    /// - Precondition: `offset` is 4-byte aligned and the value lies inside the chunk.
    public func load(from id: Int, at offset: Int) -> UInt32 {
        precondition(offset >= 0 && offset % 4 == 0 && offset + 4 <= chunkBytes, "misplaced load from a chunk")
        return address(of: id).load(fromByteOffset: offset, as: UInt32.self)
    }

    /// Lends `count` bytes of chunk `id` from `offset` to `body`.
    ///
    /// - Precondition: the range lies inside the chunk.
    public func withBytes<R, E: Error>(
        in id: Int, at offset: Int, count: Int, _ body: (RawSpan) throws(E) -> R
    ) throws(E) -> R {
        precondition(offset >= 0 && count >= 0 && offset + count <= chunkBytes, "read past the end of a chunk")
        return try body(UnsafeRawBufferPointer(start: address(of: id) + offset, count: count).bytes)
    }

    private func address(of id: Int) -> UnsafeMutableRawPointer {
        guard bases.indices.contains(id), let base = bases[id] else { preconditionFailure("chunk \(id) is not mapped") }
        return base
    }
}
