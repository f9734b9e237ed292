import Foundation
import Glibc
import Synchronization
@testable import RelayKernel

/// A TCP StatsD backend on 127.0.0.1 for the TCP-backend tests: it listens, accepts every
/// connection and (unless `reading` is off) reads everything sent, on a thread of its own.
/// `kill()` closes the listener and every connection, as a dead process's kernel does;
/// `restart()` listens again on the same port.
final class TCPTestBackend: @unchecked Sendable {  // its state is behind `state`; the thread is joined in `close`
    private struct State {
        var listener: Int32 = -1
        /// While killed: a socket bound to the port and not listening, so that connections are
        /// refused and no other test's socket takes the port meanwhile (the tests run at once).
        var placeholder: Int32 = -1
        var connections: [Int32] = []
        /// Per open connection (same order): its index in `streams`.
        var streamOf: [Int] = []
        /// Bytes received, per connection in accept order.
        var streams: [[UInt8]] = []
        var accepted = 0
        var running = true
        /// Reading is held off (connections are still accepted).
        var paused = false
    }

    let port: UInt16
    private let reading: Bool
    private let receiveBufferBytes: Int32?
    private let readChunk: Int
    private let readPauseMicroseconds: UInt32
    private let banner: [UInt8]
    private let state = Mutex(State())
    private var thread: Thread?
    private let done = DispatchSemaphore(value: 0)

    /// Listens on a kernel-chosen port.
    ///
    /// - Parameters:
    ///   - reading: read what arrives (off: accept and never read, a backend that stopped).
    ///   - receiveBufferBytes: `SO_RCVBUF` of accepted connections (small: fills at once).
    ///   - readChunk: the most bytes one `read` takes (small: a slow reader).
    ///   - readPauseMicroseconds: a pause after each round of reads (a slower reader still:
    ///     it paces the backend, it synchronises nothing).
    ///   - banner: bytes written to each connection as it is accepted (a server that greets
    ///     its clients; a StatsD backend sends nothing).
    init(
        reading: Bool = true, receiveBufferBytes: Int32? = nil, readChunk: Int = 1 << 16, readPauseMicroseconds: UInt32 = 0,
        banner: [UInt8] = []
    ) throws {
        self.readPauseMicroseconds = readPauseMicroseconds
        self.banner = banner
        self.reading = reading
        self.receiveBufferBytes = receiveBufferBytes
        self.readChunk = readChunk
        let listener = try Self.listen(port: 0, receiveBufferBytes: receiveBufferBytes)
        var address = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(listener, $0, &length) }
        }
        port = UInt16(bigEndian: address.sin_port)
        state.withLock { $0.listener = listener }
        let thread = Thread { [self] in run() }
        self.thread = thread
        thread.start()
    }

    deinit { close() }

    /// `tcp://127.0.0.1:PORT`, as given to the relay.
    var spec: String { "tcp://127.0.0.1:\(port)" }

    /// The address without scheme (for `--sendproto TCP`).
    var plainSpec: String { "127.0.0.1:\(port)" }

    private static func listen(port: UInt16, receiveBufferBytes: Int32?) throws -> Int32 {
        let descriptor = try bound(port: port, receiveBufferBytes: receiveBufferBytes)
        guard Glibc.listen(descriptor, 64) == 0 else {
            let code = errno
            Glibc.close(descriptor)
            throw Errno(rawValue: code)
        }
        return descriptor
    }

    /// A non-blocking TCP socket bound to 127.0.0.1:`port`, not listening yet.
    private static func bound(port: UInt16, receiveBufferBytes: Int32?) throws -> Int32 {
        let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard descriptor >= 0 else { throw Errno(rawValue: errno) }
        var one: Int32 = 1
        setsockopt(descriptor, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        if var size = receiveBufferBytes {
            // Set on the listener so accepted connections start with it (the window is fixed at the handshake).
            setsockopt(descriptor, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0 else {
            let code = errno
            Glibc.close(descriptor)
            throw Errno(rawValue: code)
        }
        return descriptor
    }

    private func run() {
        var buffer = [UInt8](repeating: 0, count: readChunk)
        while true {
            let (listener, connections, running, paused) = state.withLock { ($0.listener, $0.connections, $0.running, $0.paused) }
            guard running else { break }
            var polls = [pollfd(fd: listener, events: Int16(POLLIN), revents: 0)]
            if reading && !paused { polls += connections.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) } }
            _ = poll(&polls, nfds_t(polls.count), 20)
            if listener >= 0, polls[0].revents != 0 {
                // Under the lock, and only the listener still open (see the reads).
                state.withLock {
                    while $0.listener == listener {
                        let accepted = accept(listener, nil, nil)
                        guard accepted >= 0 else { break }
                        // A fresh connection's send buffer takes a short banner whole.
                        if !banner.isEmpty { _ = banner.withUnsafeBytes { send(accepted, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) } }
                        $0.connections.append(accepted)
                        $0.streamOf.append($0.streams.count)
                        $0.streams.append([])
                        $0.accepted += 1
                    }
                }
            }
            guard reading && !paused else { continue }
            if readPauseMicroseconds > 0 { usleep(readPauseMicroseconds) }
            for entry in polls.dropFirst() where entry.revents != 0 {
                state.withLock { state in
                    // Read under the lock, and only a connection still open: a descriptor
                    // `kill` closed may already be reused elsewhere in this process.
                    guard let index = state.connections.firstIndex(of: entry.fd) else { return }
                    let count = read(entry.fd, &buffer, buffer.count)
                    if count > 0 {
                        state.streams[state.streamOf[index]].append(contentsOf: buffer[0..<count])
                    } else if count == 0 || (errno != EAGAIN && errno != EINTR) {
                        Glibc.close(entry.fd)
                        state.connections.remove(at: index)
                        state.streamOf.remove(at: index)
                    }
                }
            }
        }
        done.signal()
    }

    /// Closes the listener and every connection (unread data makes the kernel reset them); the
    /// port stays held by a socket that does not listen, so connections to it are refused, and
    /// no listener another test opens meanwhile can be given it (its `SO_REUSEADDR` is cleared,
    /// so not even a socket setting the flag can share it).
    ///
    /// - Throws: `Errno` when the port cannot be held again (taken in the instant between).
    func kill() throws {
        closeAll()
        let placeholder = try Self.bound(port: port, receiveBufferBytes: receiveBufferBytes)
        var zero: Int32 = 0
        setsockopt(placeholder, SOL_SOCKET, SO_REUSEADDR, &zero, socklen_t(MemoryLayout<Int32>.size))
        state.withLock { $0.placeholder = placeholder }
    }

    /// Closes the listener, the connections and any placeholder.
    private func closeAll() {
        state.withLock { state in
            for connection in state.connections { Glibc.close(connection) }
            if state.listener >= 0 {
                // Out of LISTEN at once: `close` alone leaves the socket listening (and its port
                // taken) while the reading thread's `poll` still holds it.
                shutdown(state.listener, Int32(SHUT_RDWR))
                Glibc.close(state.listener)
            }
            if state.placeholder >= 0 { Glibc.close(state.placeholder) }
            state.listener = -1
            state.placeholder = -1
            state.connections = []
            state.streamOf = []
        }
    }

    /// Closes the open connections as a backend process that read everything and closed them
    /// does (a FIN each; a reset if bytes were left unread); the listener stays, so the relay
    /// may connect again.
    func closeConnections() {
        state.withLock { state in
            for connection in state.connections {
                // The FIN now: `close` alone sends it only once the reading thread's `poll`
                // lets the socket go, and the relay may write in between.
                shutdown(connection, Int32(SHUT_RDWR))
                Glibc.close(connection)
            }
            state.connections = []
            state.streamOf = []
        }
    }

    /// Bytes received on the open connections and not read yet (`FIONREAD`): what this
    /// host's kernel has acknowledged and holds for the backend.
    func unreadBytes() -> Int {
        state.withLock { state in
            state.connections.reduce(0) { total, connection in
                var bytes: Int32 = 0
                return ioctl(connection, UInt(FIONREAD), &bytes) == 0 ? total + Int(bytes) : total
            }
        }
    }

    /// Holds off reading (what arrives waits in the connections' buffers), or lets it go on.
    func pauseReading(_ paused: Bool) { state.withLock { $0.paused = paused } }

    /// Listens again on the same port.
    func restart() throws {
        let placeholder = state.withLock { state in
            defer { state.placeholder = -1 }
            return state.placeholder
        }
        if placeholder >= 0 {
            // `listen` takes the port as a bind would: the killed connections' TIME_WAIT would
            // conflict without the flag, which `kill` cleared.
            var one: Int32 = 1
            setsockopt(placeholder, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
            guard Glibc.listen(placeholder, 64) == 0 else {
                let code = errno
                Glibc.close(placeholder)
                throw Errno(rawValue: code)
            }
            state.withLock { $0.listener = placeholder }
            return
        }
        let listener = try Self.listen(port: port, receiveBufferBytes: receiveBufferBytes)
        state.withLock { $0.listener = listener }
    }

    /// Stops the thread and closes everything.
    func close() {
        let wasRunning = state.withLock { state -> Bool in
            let was = state.running
            state.running = false
            return was
        }
        guard wasRunning else { return }
        done.wait()
        closeAll()
    }

    /// Connections accepted so far.
    var accepted: Int { state.withLock { $0.accepted } }

    /// The bytes each connection delivered, in accept order.
    var streams: [[UInt8]] { state.withLock { $0.streams } }

    /// Every whole line received (each ended by `\n`), over all connections in accept order;
    /// a connection's unterminated tail (a line cut when it died) is not a line.
    var lines: [String] {
        streams.flatMap { stream -> [String] in
            let text = String(decoding: stream, as: UTF8.self)
            var parts = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
            parts.removeLast()  // after the last "\n": empty, or a cut line
            return parts
        }
    }

    /// Waits, polling every 10 ms for at most `seconds`, until `condition` holds.
    func wait(seconds: Double = 15, until condition: (TCPTestBackend) -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if condition(self) { return true }
            usleep(10_000)
        }
        return condition(self)
    }
}
