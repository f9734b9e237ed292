@testable import RelayKernel
import Glibc
import Synchronization
import Testing
@testable import UringRelay

/// A statsd management port on 127.0.0.1 that answers `health` and then keeps the connection
/// open, as etsy statsd's admin interface does (it waits for the next command), until stopped.
final class KeptOpenAdminPort: @unchecked Sendable {  // the serving thread shares only `running`
    private let listener: Int32
    private let running: Running
    private var thread: WorkerThreadHandle?
    let address: SocketAddress

    private final class Running: Sendable { let value = Atomic<Bool>(true) }

    /// Listens on a kernel-chosen port and answers every `health` request with `chunks`, written
    /// one after another with a short pause between, so the probe may read them separately.
    init(answering chunks: [String]) throws {
        let (fd, port) = try listeningTCPSocket()
        address = SocketAddress(numericHost: "127.0.0.1", port: port)!
        listener = fd
        let running = Running()
        self.running = running
        let replies = chunks.map { Array($0.utf8) }
        thread = WorkerThreadHandle(try WorkerThread(name: "kept-open-admin", cpu: nil) { _ in
            Self.serve(fd, replies, running)
        })
    }

    deinit {
        running.value.store(false, ordering: .relaxed)
        thread?.join()
        Glibc.close(listener)
    }

    private static func serve(_ listener: Int32, _ replies: [[UInt8]], _ running: Running) {
        var open: [Int32] = []
        defer { for connection in open { Glibc.close(connection) } }
        while running.value.load(ordering: .relaxed) {
            var poller = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
            guard poll(&poller, 1, 20) == 1 else { continue }
            let connection = accept(listener, nil, nil)
            guard connection >= 0 else { continue }
            open.append(connection)
            var request = [UInt8](repeating: 0, count: 64)
            var waiter = pollfd(fd: connection, events: Int16(POLLIN), revents: 0)
            guard poll(&waiter, 1, 1_000) == 1,
                  request.withUnsafeMutableBytes({ recv(connection, $0.baseAddress, $0.count, 0) }) > 0 else { continue }
            for (index, reply) in replies.enumerated() {
                if index > 0 { usleep(20_000) }
                _ = reply.withUnsafeBytes { send(connection, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            }
            // The connection stays open (closed only when the server stops), as statsd's does.
        }
    }
}

@Suite("TCP health probe on loopback", .timeLimit(.minutes(1)), .onOwnThread)
struct TCPProbeTests {
    /// The statsd-admin probe of one backend.
    static func adminTarget(_ address: SocketAddress) -> TCPProbe.Target {
        TCPProbe.Target(address: address, request: Array("health\n".utf8), expect: Array("health: up".utf8))
    }

    // The probe runs no relay and no io driver (it is plain sockets and poll(2) on the health
    // thread), so these cases are not parametrised by driver.
    @Test("a statsd admin port that keeps the connection open is judged on its reply line, not timed out", arguments: [
        (["health: down\n"], "reply: 'health: down'"),
        (["health: up\n"], "up"),
        (["health: ", "down\n"], "reply: 'health: down'"),
        (["health: ", "up\r\n"], "up"),
        ([String(repeating: "x", count: 1_000)],
         "reply: no line end in the first 256 bytes: '\(String(repeating: "x", count: 64))' (257 bytes, first 64 shown)"),
    ])
    func keptOpen(_ chunks: [String], _ expected: String) throws {
        let admin = try KeptOpenAdminPort(answering: chunks)
        // A long timeout: a probe that waited for the server to close would report `timed out`.
        let outcomes = TCPProbe.run([Self.adminTarget(admin.address)], timeoutMilliseconds: 5_000)
        #expect(outcomes.map { $0 ?? "up" } == [expected])
    }

    @Test("a kept-open 'health: down' beside a backend that never answers: each gets its own outcome")
    func mixedRound() throws {
        let down = try KeptOpenAdminPort(answering: ["health: down\n"])
        let silent = try KeptOpenAdminPort(answering: [])
        let up = try KeptOpenAdminPort(answering: ["health: up\n"])
        let outcomes = TCPProbe.run([down, silent, up].map { Self.adminTarget($0.address) }, timeoutMilliseconds: 300)
        #expect(outcomes.map { $0 ?? "up" } == ["reply: 'health: down'", "timed out after 300ms", "up"])
    }
}
