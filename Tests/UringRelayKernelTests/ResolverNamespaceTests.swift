@testable import RelayKernel
import Foundation
import Glibc
import Testing
@testable import UringRelay

/// `statsrelay` with a name server that takes every query and answers none: its own network
/// namespace, `/etc/resolv.conf` bind-mounted to name `127.0.0.1`, where a UDP socket the relay
/// inherits is bound and never read; `getaddrinfo` then waits 30 s per try, three tries.
@Suite("statsrelay with a resolver that never answers", .timeLimit(.minutes(1)), .onOwnThread)
struct ResolverNamespaceTests {
    /// A file in a fresh temporary directory with `text`; removed with the directory by the caller.
    static func file(_ name: String, _ text: String) throws -> URL {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("statsrelay-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let url = directory.appendingPathComponent(name)
        try Data(text.utf8).write(to: url)
        return url
    }

    /// Replaces `url`'s contents in place (same inode: a bind mount of it sees the change).
    static func overwrite(_ url: URL, with text: String) throws {
        let handle = try FileHandle(forWritingTo: url)
        defer { try? handle.close() }
        try handle.truncate(atOffset: 0)
        try handle.write(contentsOf: Data(text.utf8))
    }

    /// A namespace whose resolver is the black hole, and whose `/etc/hosts` is `hosts`.
    static func namespace(hosts: URL) throws -> NetworkNamespace {
        let resolv = try file("resolv.conf", "nameserver 127.0.0.1\noptions timeout:30 attempts:3\n")
        return NetworkNamespace(
            binds: [(resolv.path, "/etc/resolv.conf"), (hosts.path, "/etc/hosts")], blackhole: ("127.0.0.1", 53))
    }

    @Test("start-up waiting for the resolver answers SIGTERM at once and exits 75, naming the backend and the resolver")
    func startupStop() throws {
        let hosts = try Self.file("hosts", "127.0.0.1 localhost\n")
        defer { try? FileManager.default.removeItem(at: hosts.deletingLastPathComponent()) }
        let network = try Self.namespace(hosts: hosts)
        let python = try network.requireAvailable()
        // It exits before any driver is chosen: `.auto` asserts none.
        let relay = try RelayProcess(
            driver: .auto, launcher: network.launcher(python: python),
            ["--bind", "127.0.0.1", "--port", "0", "statsd.blackhole.test:9000"])
        #expect(relay.waitForLog("resolving backend names"), "\(relay.standardError)")
        relay.signal(SIGTERM)
        // getaddrinfo would go on for a minute and a half; the stop must not wait for it.
        #expect(relay.waitForExit(seconds: 5) == 75, "\(relay.standardError)")
        let line = try #require(relay.standardError.split(separator: "\n").last.map(String.init))
        #expect(line.hasPrefix("resolve backend statsd.blackhole.test:9000: stopped by SIGTERM after "), "\(line)")
        #expect(line.hasSuffix(" (resolver)"), "\(line)")
        #expect(!relay.standardError.contains("listening on"))
    }

    @Test("a refresh stuck in the resolver neither delays a stop nor is waited for: exit 0 within the shutdown timeout", arguments: ioDrivers)
    func runningStop(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        // The name resolves from /etc/hosts at start; removed from it, later lookups ask the black hole.
        let hosts = try Self.file("hosts", "127.0.0.1 localhost\n127.0.0.1 statsd.hosts.test\n")
        defer { try? FileManager.default.removeItem(at: hosts.deletingLastPathComponent()) }
        let network = try Self.namespace(hosts: hosts)
        let python = try network.requireAvailable()
        let relay = try RelayProcess(
            driver: driver, launcher: network.launcher(python: python),
            ["--bind", "127.0.0.1", "--port", "0", "--threads", "1", "--dns-refresh", "100ms", "statsd.hosts.test:9000"])
        _ = try relay.listenAddress()
        #expect(relay.standardError.contains("io_backend=\(driver.rawValue)"))
        try Self.overwrite(hosts, with: "127.0.0.1 localhost\n")
        #expect(relay.waitForLog("backend name lookup has not answered"), "\(relay.standardError)")
        relay.signal(SIGTERM)
        #expect(relay.waitForExit(seconds: 5) == 0, "\(relay.standardError)")
        #expect(relay.standardError.contains("stopped"))
    }
}
