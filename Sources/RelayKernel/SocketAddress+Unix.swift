import Glibc

/// A Unix socket's file system path as a `SocketAddress` (`struct sockaddr_un` in the storage):
/// how a Unix datagram listener travels with the UDP ones, through the same listener lists,
/// ids, reloads and hand-overs. It has no port (`port` reads 0) and no host bytes.
extension SocketAddress {
    /// `path` as a Unix socket address.
    ///
    /// - Returns: `nil` for an empty path, one with a NUL byte, one that starts with `@` (the
    ///   abstract namespace has no file to set a mode on or to remove), or one too long for
    ///   `sun_path` (107 bytes and its terminating NUL).
    public init?(unixPath path: String) {
        let bytes = Array(path.utf8)
        var address = sockaddr_un()
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard !bytes.isEmpty, bytes.count < capacity, !bytes.contains(0), bytes[0] != UInt8(ascii: "@") else { return nil }
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in raw.copyBytes(from: bytes) }
        var storage = sockaddr_storage()
        withUnsafeMutableBytes(of: &storage) { raw in raw.storeBytes(of: address, as: sockaddr_un.self) }
        // As getsockname(2) reports a path socket: the path and its terminating NUL.
        self.init(storage: storage, length: socklen_t(MemoryLayout<sockaddr_un>.offset(of: \.sun_path)! + bytes.count + 1))
    }

    /// The path of a Unix socket address; `nil` for IPv4 and IPv6.
    public var unixPath: String? {
        guard family == .unix else { return nil }
        let offset = MemoryLayout<sockaddr_un>.offset(of: \.sun_path)!
        return withUnsafeBytes(of: storage) { raw in
            let end = min(Int(length), MemoryLayout<sockaddr_un>.size)
            guard end > offset else { return "" }
            let bytes = raw[offset..<end].prefix { $0 != 0 }
            return String(decoding: bytes, as: UTF8.self)
        }
    }
}
