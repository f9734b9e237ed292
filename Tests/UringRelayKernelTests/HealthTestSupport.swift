@testable import RelayKernel
import Dispatch
import Foundation
import Glibc
import Logging
import Synchronization
@testable import UringRelay

/// A TCP server on 127.0.0.1 standing in for a backend's health port: it accepts and closes
/// connections (`tcp` checks) or answers `health` like etsy statsd's management port.
///
/// `close()` stops listening but keeps the port bound (`shutdown(2)` on the listening socket,
/// as HAProxy pauses a listener), so no other socket, such as a health probe's ephemeral
/// source port or another test's listener, can take the port before `reopen()` listens again.
/// That needs the port bound by number (a socket bound to port 0 gives its port back at
/// `shutdown`, and `listen` then picks another) and `SO_REUSEADDR` off once bound (a shut
/// listener's port is open to any bind with `SO_REUSEADDR` while its own flag is on).
final class FakeHealthPort: @unchecked Sendable {  // mutable state lives in `Shared`
    /// What the serving thread shares with the owner.
    private final class Shared: Sendable {
        let answer = Mutex("health: up\n")
        let running = Atomic<Bool>(true)
    }

    private let listener: Int32
    private let shared = Shared()
    private var thread: WorkerThreadHandle?
    let port: UInt16

    /// Starts listening; `port` 0 picks one.
    init(port: UInt16 = 0) throws {
        let (fd, bound) = try Self.listenByNumber(port: port)
        self.port = bound
        listener = fd
        thread = WorkerThreadHandle(try WorkerThread(name: "fake-health", cpu: nil) { [shared] _ in
            Self.serve(fd, shared)
        })
    }

    deinit {
        shared.running.store(false, ordering: .relaxed)
        thread?.join()
        Glibc.close(listener)
    }

    /// What the admin port answers to `health`.
    func answer(_ text: String) { shared.answer.withLock { $0 = text } }

    /// Stops listening: connects are refused until `reopen()`.
    func close() { shutdown(listener, Int32(SHUT_RDWR)) }

    /// Listens again on the same port.
    ///
    /// `listen` takes the port again as a bind would, so with `SO_REUSEADDR` off it conflicts
    /// with any connection this port still has: one `serve` has not closed yet, or the
    /// TIME_WAIT of one it closed first (`EADDRINUSE`, seen once in a full run). Those have the
    /// flag (`serve` sets it), so it is on for the `listen` alone and off again after.
    func reopen() throws {
        var flag: Int32 = 1
        setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &flag, socklen_t(MemoryLayout<Int32>.size))
        let listened = listen(listener, 64) == 0 ? nil : Errno.current
        flag = 0
        setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &flag, socklen_t(MemoryLayout<Int32>.size))
        if let listened { throw listened }
    }

    /// A listener on 127.0.0.1:`port`, bound by number even when `port` is 0 (the kernel's pick
    /// is held by a reservation while the listener binds it), with `SO_REUSEADDR` cleared.
    private static func listenByNumber(port: UInt16) throws -> (descriptor: Int32, port: UInt16) {
        var reservation: Int32 = -1
        defer { if reservation >= 0 { Glibc.close(reservation) } }
        var number = port
        if port == 0 {
            // Bound with SO_REUSEADDR and not listening, the reservation lets the listener bind
            // the same port, and no other socket takes it in between.
            reservation = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var one: Int32 = 1
            setsockopt(reservation, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
            guard SocketAddress(numericHost: "127.0.0.1", port: 0)!.withUnsafeSockaddr({ bind(reservation, $0, $1) }) == 0 else {
                throw Errno.current
            }
            number = boundPort(of: reservation)
        }
        let (fd, bound) = try listeningTCPSocket(port: number, reuseAddress: true, backlog: 64)
        var zero: Int32 = 0
        guard setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &zero, socklen_t(MemoryLayout<Int32>.size)) == 0 else {
            let failure = Errno.current
            Glibc.close(fd)
            throw failure
        }
        return (fd, bound)
    }

    private static func serve(_ listener: Int32, _ shared: Shared) {
        while shared.running.load(ordering: .relaxed) {
            var poller = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
            guard poll(&poller, 1, 20) == 1 else { continue }
            guard poller.revents & Int16(POLLIN) != 0 else {
                // Shut (`close()`): the socket reports a hang-up at once, every time; wait as
                // an idle poll would rather than spin.
                _ = poll(nil, 0, 20)
                continue
            }
            let connection = accept(listener, nil, nil)
            guard connection >= 0 else { continue }
            // A connection inherits the listener's SO_REUSEADDR, cleared: set it again, or the
            // TIME_WAIT this end leaves would keep the port from a later bind with the flag.
            var one: Int32 = 1
            setsockopt(connection, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
            var request = [UInt8](repeating: 0, count: 64)
            var waiter = pollfd(fd: connection, events: Int16(POLLIN), revents: 0)
            if poll(&waiter, 1, 200) == 1 {
                let count = request.withUnsafeMutableBytes { recv(connection, $0.baseAddress, $0.count, 0) }
                if count > 0, String(decoding: request.prefix(count), as: UTF8.self).hasPrefix("health") {
                    let reply = Array(shared.answer.withLock { $0 }.utf8)
                    _ = reply.withUnsafeBytes { send(connection, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                }
            }
            Glibc.close(connection)
        }
    }
}

/// A log handler that keeps every message, so tests can check what operators would see.
struct CapturingLogHandler: LogHandler {
    let store: LockedText
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .info

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let details = (event.metadata ?? [:]).sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        store.withLock { $0 += "\(event.level) \(event.message) \(details)\n" }
    }
}

/// How many lines of `log` contain `text`.
func occurrences(of text: String, in log: String) -> Int {
    log.split(separator: "\n").filter { $0.contains(text) }.count
}

/// A listening TCP socket on 127.0.0.1:`port` (0: the kernel picks), and the port it got.
///
/// Non-blocking: a server polls it, then accepts; a connection reset between the two would
/// leave a blocking `accept` waiting for the next one, and a server being stopped hanging.
func listeningTCPSocket(port: UInt16 = 0, reuseAddress: Bool = false, backlog: Int32 = 16) throws -> (descriptor: Int32, port: UInt16) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
    if reuseAddress {
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
    }
    let bound = SocketAddress(numericHost: "127.0.0.1", port: port)!.withUnsafeSockaddr { bind(fd, $0, $1) }
    guard bound == 0, listen(fd, backlog) == 0 else {
        let failure = Errno.current
        Glibc.close(fd)
        throw failure
    }
    return (fd, boundPort(of: fd))
}

/// The port an IPv4 socket is bound to.
func boundPort(of fd: Int32) -> UInt16 {
    var storage = sockaddr_in()
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    withUnsafeMutableBytes(of: &storage) { _ = getsockname(fd, $0.baseAddress!.assumingMemoryBound(to: sockaddr.self), &length) }
    return UInt16(bigEndian: storage.sin_port)
}

/// `count` UDP backends on 127.0.0.1, each with a `FakeHealthPort` on the TCP port of the same
/// number (so `--health-check tcp` checks it); a backend whose TCP twin is taken (an outgoing
/// connection's ephemeral port) is replaced by one on another UDP port.
func backendsWithHealthTwins(_ count: Int) throws -> (backends: [TestBackend], twins: [FakeHealthPort]) {
    var backends: [TestBackend] = []
    var twins: [FakeHealthPort] = []
    for _ in 0..<50 where backends.count < count {
        let backend = try TestBackend()
        guard let twin = try HealthHarness.healthPort(on: backend.address.port) else { continue }
        backends.append(backend)
        twins.append(twin)
    }
    guard backends.count == count else { throw Errno(rawValue: EADDRINUSE) }
    return (backends, twins)
}
