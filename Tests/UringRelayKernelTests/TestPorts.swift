import Foundation
import Glibc
import Synchronization
import Testing
@testable import RelayKernel

/// A free TCP port on 127.0.0.1, for a listener a test starts later (`--tcp-port`, a listener a
/// reload adds): `TestPorts.take()`.
func unusedTCPPort() throws -> UInt16 { try TestPorts.take() }

/// A free UDP port on 127.0.0.1, for a relay that never binds it (a dead backend, a port a
/// refused start names) or one in its own network namespace: `TestPorts.take()`.
func unusedPort() throws -> UInt16 { try TestPorts.take() }

/// Ports that tests bind later, or name without binding: taken in turn from a range just below
/// the kernel's ephemeral ports (`ip_local_port_range`), each at most once per test process,
/// and each checked free at the time (bound without `SO_REUSEADDR`/`SO_REUSEPORT`, TCP and UDP).
///
/// A port that `bind(0)` chose and the test closed again is back in the ephemeral range: the
/// next `bind(0)` or outgoing connection of a test running beside it may be given the same
/// number before the port is used (seen in CI: two TCP tests' listeners on one port, each
/// receiving the other's connection). No `bind(0)` and no connection takes a port below the
/// ephemeral range, and the counter hands out each one once.
enum TestPorts {
    /// The range: the 8 192 ports below the ephemeral range's start (32768 by default).
    static let range: Range<Int> = {
        let lowestEphemeral = ephemeralRangeStart() ?? 32_768
        return max(1_024, lowestEphemeral - 8_192)..<lowestEphemeral
    }()

    /// How many ports were taken: the next is `range.lowerBound + (start + taken) % range.count`.
    private static let taken = Atomic<Int>(0)
    /// Where this process starts in the range, by its pid: two test processes at once (a
    /// sanitizer run beside a plain one) start apart, and each port is checked anyway.
    private static let start = Int(getpid()) % 4_096

    /// A port of `range` that no socket holds now and this process has not handed out before.
    ///
    /// - Throws: `Errno(EADDRINUSE)` when every port of the range was tried.
    static func take() throws -> UInt16 {
        for _ in 0..<range.count {
            let index = taken.wrappingAdd(1, ordering: .relaxed).oldValue
            let port = UInt16(range.lowerBound + (start + index) % range.count)
            if isFree(port, type: SOCK_STREAM) && isFree(port, type: SOCK_DGRAM) { return port }
        }
        throw Errno(rawValue: EADDRINUSE)
    }

    /// Whether a socket of `type` can bind 127.0.0.1:`port` on its own (no `SO_REUSE*`: a
    /// relay's `SO_REUSEPORT` listener or a connection in `TIME_WAIT` on it makes it busy).
    private static func isFree(_ port: UInt16, type: __socket_type) -> Bool {
        let descriptor = socket(AF_INET, Int32(type.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else { return false }
        defer { close(descriptor) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
            }
        }
    }

    /// The first port of `/proc/sys/net/ipv4/ip_local_port_range`, if it can be read.
    static func ephemeralRangeStart() -> Int? {
        guard let text = try? String(contentsOfFile: "/proc/sys/net/ipv4/ip_local_port_range", encoding: .utf8),
              let low = text.split(whereSeparator: \.isWhitespace).first.flatMap({ Int($0) }), low > 1_024 else { return nil }
        return low
    }
}

@Suite("Test ports: below the ephemeral range, each once", .onOwnThread)
struct TestPortsTests {
    @Test("ports taken at once from many tasks are distinct, below the ephemeral range, and free to bind")
    func distinctAndFree() async throws {
        let ports = try await withThrowingTaskGroup(of: UInt16.self) { group in
            for _ in 0..<64 { group.addTask { try TestPorts.take() } }
            return try await group.reduce(into: [UInt16]()) { $0.append($1) }
        }
        #expect(Set(ports).count == ports.count)
        let ephemeral = TestPorts.ephemeralRangeStart() ?? 32_768
        #expect(ports.allSatisfy { Int($0) < ephemeral && TestPorts.range.contains(Int($0)) })
        for port in ports {
            // Free to bind as a relay would, with SO_REUSEPORT: TCP, then UDP.
            _ = try TCPListenSocket.listening(on: SocketAddress(numericHost: "127.0.0.1", port: port)!)
            _ = try UDPSocket.bound(to: SocketAddress(numericHost: "127.0.0.1", port: port)!)
        }
    }
}
