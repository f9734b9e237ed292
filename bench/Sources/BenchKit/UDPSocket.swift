import Glibc

/// Thin wrappers over the socket calls the tools share; each returns or throws at once.
public enum UDPSocket {
    /// Opens a blocking IPv4 UDP socket with close-on-exec set.
    public static func open() throws(BenchError) -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw .system("socket") }
        return fd
    }

    /// Binds `fd` to `endpoint`.
    public static func bind(_ fd: Int32, to endpoint: LoopbackEndpoint) throws(BenchError) {
        var address = endpoint.socketAddress
        let result = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard result == 0 else { throw .system("bind(\(endpoint))") }
    }

    /// Connects `fd` to `endpoint`, so that sends need no address and the kernel skips a route lookup per datagram.
    public static func connect(_ fd: Int32, to endpoint: LoopbackEndpoint) throws(BenchError) {
        var address = endpoint.socketAddress
        let result = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard result == 0 else { throw .system("connect(\(endpoint))") }
    }

    /// The port `fd` is bound to.
    public static func localPort(_ fd: Int32) throws(BenchError) -> UInt16 {
        var address = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let result = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                getsockname(fd, $0, &length)
            }
        }
        guard result == 0 else { throw .system("getsockname") }
        return UInt16(bigEndian: address.sin_port)
    }

    /// Sets the receive buffer to `bytes`, with `SO_RCVBUFFORCE` so that `net.core.rmem_max` does not cap it
    /// (root only), falling back to `SO_RCVBUF`; returns whether the force worked and the size the kernel reports,
    /// which is twice the request because the kernel counts its bookkeeping.
    public static func setReceiveBuffer(_ fd: Int32, bytes: Int) -> (forced: Bool, effective: Int) {
        var request = Int32(clamping: bytes)
        let size = socklen_t(MemoryLayout<Int32>.size)
        let forced = setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &request, size) == 0
        if !forced {
            _ = setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &request, size)
        }
        return (forced, intOption(fd, SO_RCVBUF))
    }

    /// Sets the send buffer to `bytes` with `SO_SNDBUFFORCE`, falling back to `SO_SNDBUF`.
    public static func setSendBuffer(_ fd: Int32, bytes: Int) {
        var request = Int32(clamping: bytes)
        let size = socklen_t(MemoryLayout<Int32>.size)
        if setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &request, size) != 0 {
            _ = setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &request, size)
        }
    }

    /// Makes blocking receives on `fd` give up with `EAGAIN` after `milliseconds`, so loops can see a stop request.
    public static func setReceiveTimeout(_ fd: Int32, milliseconds: Int) throws(BenchError) {
        var timeout = timeval(tv_sec: milliseconds / 1000, tv_usec: (milliseconds % 1000) * 1000)
        guard setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size)) == 0 else {
            throw .system("setsockopt(SO_RCVTIMEO)")
        }
    }

    /// Datagrams the kernel dropped on `fd` for lack of buffer space (`SK_MEMINFO_DROPS` from `SO_MEMINFO`).
    public static func drops(_ fd: Int32) -> Int? {
        // SK_MEMINFO_VARS is 9 and SK_MEMINFO_DROPS is index 8 in linux/sock_diag.h, which Glibc does not export.
        var info = [UInt32](repeating: 0, count: 9)
        var length = socklen_t(MemoryLayout<UInt32>.size * info.count)
        let result = info.withUnsafeMutableBytes { getsockopt(fd, SOL_SOCKET, SO_MEMINFO, $0.baseAddress, &length) }
        guard result == 0, length >= socklen_t(MemoryLayout<UInt32>.size * 9) else { return nil }
        return Int(info[8])
    }

    /// Reads an integer socket option at level `SOL_SOCKET`, or -1 when the call fails.
    private static func intOption(_ fd: Int32, _ option: Int32) -> Int {
        var value: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(fd, SOL_SOCKET, option, &value, &length) == 0 else { return -1 }
        return Int(value)
    }
}
