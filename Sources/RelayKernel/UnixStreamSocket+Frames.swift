import CLiburing
import Glibc

/// Length-prefixed frames on a stream socket, some carrying sockets (`SCM_RIGHTS`).
///
/// ```
///  0               4                      4 + length
///  +---------------+----------------------+
///  | length (u32,  | payload              |   descriptors, if any, ride on the frame's
///  | big-endian)   | (length bytes)       |   first byte (one SCM_RIGHTS message)
///  +---------------+----------------------+
/// ```
/// The length is checked against `maximumFrameBytes` before anything else is read, so a peer
/// cannot make the reader allocate or wait for more than that.
extension UnixStreamSocket {
    /// The largest payload a frame may have.
    public static let maximumFrameBytes = 4_096
    /// The most descriptors one frame may carry (the kernel's `SCM_MAX_FD`).
    public static let maximumDescriptorsPerFrame = 253

    /// Why a frame could not be read.
    public enum FrameError: Error, Equatable, CustomStringConvertible, Sendable {
        /// The peer closed the connection (after `received` bytes of the frame).
        case closed(received: Int)
        /// Nothing complete came in time.
        case timedOut
        /// The length prefix announced more than `maximumFrameBytes` (or nothing: 0).
        case badLength(UInt32)
        /// The descriptors attached did not fit (`MSG_CTRUNC`): the kernel closed the rest.
        case descriptorsTruncated
        /// The system call failed.
        case system(Errno)

        public var description: String {
            switch self {
            case .closed(let received): received == 0 ? "connection closed" : "connection closed inside a frame (\(received) bytes read)"
            case .timedOut: "no complete frame in time"
            case .badLength(let length): "frame length \(length) outside 1...\(UnixStreamSocket.maximumFrameBytes)"
            case .descriptorsTruncated: "passed descriptors truncated (MSG_CTRUNC)"
            case .system(let errno): "\(errno)"
            }
        }
    }

    /// Sends one frame with `payload`, passing `sockets` (their descriptors are duplicated into
    /// the receiver when it reads the frame; this process keeps its own).
    ///
    /// - Parameter timeoutMilliseconds: the longest wait for room in the socket.
    /// - Throws: `Errno` (`EPIPE`: the peer has gone; `ETIMEDOUT`; `EINVAL` for an empty or
    ///   oversized payload, or too many sockets).
    public func sendFrame(_ payload: [UInt8], passing sockets: [SocketBox] = [], timeoutMilliseconds: Int32) throws(Errno) {
        guard !payload.isEmpty, payload.count <= Self.maximumFrameBytes, sockets.count <= Self.maximumDescriptorsPerFrame else {
            throw Errno.invalidArgument
        }
        let length = UInt32(payload.count)
        var frame: [UInt8] = [UInt8(length >> 24), UInt8((length >> 16) & 0xff), UInt8((length >> 8) & 0xff), UInt8(length & 0xff)]
        frame += payload
        let descriptors = sockets.map { $0.socket.descriptor }
        var sent = 0
        let deadline = MonotonicClock.nanoseconds() &+ UInt64(max(timeoutMilliseconds, 0)) * 1_000_000
        while sent < frame.count {
            try waitFor(Int16(POLLOUT), deadline: deadline)
            let attached = sent == 0 ? descriptors : []  // the descriptors go with the first piece only
            var control = [UInt64](repeating: 0, count: Self.controlWords(descriptors: attached.count))
            let offset = sent
            let result: Result<Int, Errno> = frame.withUnsafeMutableBytes { bytes in
                control.withUnsafeMutableBytes { controlBytes in
                    var vector = iovec(iov_base: bytes.baseAddress! + offset, iov_len: bytes.count - offset)
                    return withUnsafeMutablePointer(to: &vector) { vectorPointer in
                        var message = msghdr()
                        message.msg_iov = vectorPointer
                        message.msg_iovlen = 1
                        if !attached.isEmpty {
                            Self.writeRights(attached, into: controlBytes)
                            message.msg_control = controlBytes.baseAddress
                            message.msg_controllen = Self.space(descriptors: attached.count)
                        }
                        return Result { () throws(Errno) -> Int in
                            try systemCall { sendmsg(descriptor, &message, Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) }
                        }
                    }
                }
            }
            let count: Int
            switch result {
            case .success(let value): count = value
            case .failure(let error) where error.rawValue == EAGAIN: continue
            case .failure(let error): throw error
            }
            sent += count
        }
    }

    /// Reads one frame, waiting at most `timeoutMilliseconds` for all of it, with the sockets
    /// it carried (owned, unchecked: see `UDPSocket.listenerMismatch`).
    ///
    /// - Throws: `FrameError`; after `badLength` the stream is out of step (close it).
    public func receiveFrame(timeoutMilliseconds: Int32) throws(FrameError) -> (payload: [UInt8], sockets: [SocketBox]) {
        let deadline = MonotonicClock.nanoseconds() &+ UInt64(max(timeoutMilliseconds, 0)) * 1_000_000
        var sockets: [SocketBox] = []
        let header = try receiveExactly(4, deadline: deadline, sockets: &sockets, before: 0)
        let length = header.reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
        guard length >= 1, length <= UInt32(Self.maximumFrameBytes) else { throw .badLength(length) }
        let payload = try receiveExactly(Int(length), deadline: deadline, sockets: &sockets, before: 4)
        return (payload, sockets)
    }

    /// Reads exactly `count` bytes by `deadline`, keeping any descriptors that come with them.
    private func receiveExactly(
        _ count: Int, deadline: UInt64, sockets: inout [SocketBox], before: Int
    ) throws(FrameError) -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: count)
        var received = 0
        var control = [UInt64](repeating: 0, count: Self.controlWords(descriptors: Self.maximumDescriptorsPerFrame))
        while received < count {
            do throws(Errno) { try waitFor(Int16(POLLIN), deadline: deadline) } catch {
                throw error.rawValue == ETIMEDOUT ? .timedOut : .system(error)
            }
            var truncated = false
            let result: Result<Int, Errno> = buffer.withUnsafeMutableBytes { bytes in
                control.withUnsafeMutableBytes { controlBytes in
                    var vector = iovec(iov_base: bytes.baseAddress! + received, iov_len: count - received)
                    return withUnsafeMutablePointer(to: &vector) { vectorPointer in
                        var message = msghdr()
                        message.msg_iov = vectorPointer
                        message.msg_iovlen = 1
                        message.msg_control = controlBytes.baseAddress
                        message.msg_controllen = controlBytes.count
                        let read = Result { () throws(Errno) -> Int in
                            try systemCall { recvmsg(descriptor, &message, Int32(MSG_DONTWAIT | MSG_CMSG_CLOEXEC)) }
                        }
                        // Owned at once, so a later failure closes them.
                        for passed in Self.readRights(controlBytes, length: Int(message.msg_controllen)) {
                            sockets.append(SocketBox(UDPSocket.adopting(descriptor: passed)))
                        }
                        truncated = message.msg_flags & Int32(MSG_CTRUNC) != 0
                        return read
                    }
                }
            }
            let read: Int
            switch result {
            case .success(let value): read = value
            case .failure(let error) where error.rawValue == EAGAIN: continue
            case .failure(let error): throw .system(error)
            }
            if truncated { throw .descriptorsTruncated }
            if read == 0 { throw .closed(received: before + received) }
            received += read
        }
        return buffer
    }

    /// Waits until the socket is ready for `events`, or throws `ETIMEDOUT` at `deadline`.
    private func waitFor(_ events: Int16, deadline: UInt64) throws(Errno) {
        var poller = pollfd(fd: descriptor, events: events, revents: 0)
        while true {
            let now = MonotonicClock.nanoseconds()
            guard now < deadline else { throw Errno(rawValue: ETIMEDOUT) }
            let milliseconds = Int32(clamping: (deadline - now + 999_999) / 1_000_000)
            if try systemCall({ poll(&poller, 1, milliseconds) }) > 0 { return }
        }
    }

    // The cmsg(3) macros, which Swift cannot import: a header of `cmsghdr` size, then the data,
    // each rounded up to `size_t` alignment (CMSG_ALIGN).
    private static func align(_ length: Int) -> Int {
        let word = MemoryLayout<Int>.size
        return (length + word - 1) & ~(word - 1)
    }

    private static var headerBytes: Int { align(MemoryLayout<cmsghdr>.size) }

    /// `CMSG_SPACE(descriptors * sizeof(int))`.
    private static func space(descriptors: Int) -> Int { headerBytes + align(descriptors * MemoryLayout<Int32>.size) }

    /// The control buffer in 8-byte words (so that it is aligned for `cmsghdr`).
    private static func controlWords(descriptors: Int) -> Int { max(1, (space(descriptors: descriptors) + 7) / 8) }

    /// Writes one `SCM_RIGHTS` message with `descriptors` at the start of `control`.
    private static func writeRights(_ descriptors: [Int32], into control: UnsafeMutableRawBufferPointer) {
        var header = cmsghdr()
        header.cmsg_len = headerBytes + descriptors.count * MemoryLayout<Int32>.size  // CMSG_LEN
        header.cmsg_level = SOL_SOCKET
        header.cmsg_type = Int32(SCM_RIGHTS)
        control.storeBytes(of: header, as: cmsghdr.self)
        for (index, descriptor) in descriptors.enumerated() {
            control.storeBytes(of: descriptor, toByteOffset: headerBytes + index * MemoryLayout<Int32>.size, as: Int32.self)
        }
    }

    /// The descriptors of every `SCM_RIGHTS` message in the first `length` bytes of `control`
    /// (the `msg_controllen` the kernel reported).
    private static func readRights(_ control: UnsafeMutableRawBufferPointer, length: Int) -> [Int32] {
        var descriptors: [Int32] = []
        var offset = 0
        let limit = min(length, control.count)
        while offset + MemoryLayout<cmsghdr>.size <= limit {
            let header = control.load(fromByteOffset: offset, as: cmsghdr.self)
            let messageLength = Int(header.cmsg_len)
            guard messageLength >= headerBytes, offset + messageLength <= limit else { break }
            if header.cmsg_level == SOL_SOCKET && header.cmsg_type == Int32(SCM_RIGHTS) {
                let count = (messageLength - headerBytes) / MemoryLayout<Int32>.size
                for index in 0..<count {
                    descriptors.append(control.load(fromByteOffset: offset + headerBytes + index * MemoryLayout<Int32>.size, as: Int32.self))
                }
            }
            offset += align(messageLength)
        }
        return descriptors
    }
}
