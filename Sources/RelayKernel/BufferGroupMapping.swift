import CLiburing
import Glibc

/// The memory of a provided-buffer group, mapped and registered with a ring: the group's ring
/// of `io_uring_buf` entries and the buffers themselves, each its own anonymous mapping
/// (page-rounded), so the group's owner (`ProvidedBufferRing` for datagrams,
/// `StreamBufferRing` for TCP ingest) can give both back with `munmap(2)`.
struct BufferGroupMapping {
    /// The group's ring of buffer entries (`io_uring_buf_ring`).
    let entries: UnsafeMutableRawPointer
    /// The buffers, `stride` bytes apart.
    let buffers: UnsafeMutableRawPointer
    /// Bytes mapped for `entries`.
    let entriesBytes: Int
    /// Bytes mapped for `buffers`.
    let buffersBytes: Int

    /// Maps room for `count` entries and `count` buffers `stride` bytes apart, and registers the
    /// entries as group `groupID` of `ring` (`io_uring_register_buf_ring(3)`); on any failure
    /// what was mapped is unmapped.
    ///
    /// - Throws: `Errno` from `mmap` or the registration (`ENOMEM`: the memlock limit).
    init(ring: borrowing Ring, groupID: UInt16, count: Int, stride: Int) throws(Errno) {
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let entriesBytes = (count * MemoryLayout<io_uring_buf>.stride + page - 1) / page * page
        let buffersBytes = (count * stride + page - 1) / page * page
        guard let entries = mmap(nil, entriesBytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0),
              entries != MAP_FAILED else { throw Errno.current }
        guard let buffers = mmap(nil, buffersBytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0),
              buffers != MAP_FAILED else {
            let failure = Errno.current
            munmap(entries, entriesBytes)
            throw failure
        }
        var registration = io_uring_buf_reg()
        registration.ring_addr = UInt64(UInt(bitPattern: entries))
        registration.ring_entries = UInt32(count)
        registration.bgid = groupID
        let registered = try ring.withUnsafeRing { handle in io_uring_register_buf_ring(handle, &registration, 0) }
        if registered < 0 {
            munmap(entries, entriesBytes)
            munmap(buffers, buffersBytes)
            throw Errno(rawValue: -registered)
        }
        self.entries = entries
        self.buffers = buffers
        self.entriesBytes = entriesBytes
        self.buffersBytes = buffersBytes
    }
}
