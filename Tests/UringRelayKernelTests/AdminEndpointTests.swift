@testable import RelayKernel
import Foundation
import Glibc
import Testing
@testable import UringRelay

/// A relay in this process with its admin endpoint on a kernel-chosen loopback port.
final class AdminRelay: @unchecked Sendable {
    let relay: InProcessRelay
    let admin: AdminServer

    init(backends: [TestBackend], driver: IOBackendChoice) throws {
        relay = try InProcessRelay(backends: backends, driver: driver)
        admin = try AdminServer(
            address: AdminAddress(host: "127.0.0.1", port: 0), endpoint: AdminEndpoint(relay: relay.relay, version: "test"))
    }
}

@Suite("Admin endpoint on loopback", .timeLimit(.minutes(1)), .onOwnThread)
struct AdminEndpointTests {
    @Test("/metrics counts exactly the traffic sent, on the driver asked for, and promtool accepts it", arguments: ioDrivers)
    func metricsEqualTraffic(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backends = try (0..<2).map { _ in try TestBackend() }
        let subject = try AdminRelay(backends: backends, driver: driver)
        defer {
            subject.admin.stop()
            _ = subject.relay.stop()
        }
        #expect(subject.relay.relay.driver == driver)
        let good = (0..<30).map { "adm.\($0 % 7).count:\($0)|c\nadm.\($0).timer:1|ms\nadm.gauge.\($0):2|g" }
        let malformed = Array(repeating: "no colon here", count: 5) + [":1|c", ":2|c"]
        let datagrams = good + malformed
        try send(datagrams, to: subject.relay.address)
        let received = try collect(from: backends, expectedLines: 90)
        #expect(received.totalLines == 90)

        let (samples, text) = try scrape(subject.admin.address) { samples in
            value(samples, "statsrelay_lines_forwarded_total") == 90
                && samples.filter { $0.name == "statsrelay_backend_lines_sent_total" }.reduce(0) { $0 + $1.value } == 90
        }
        let listener = ["listener": "udp:\(subject.relay.address)"]
        #expect(value(samples, "statsrelay_datagrams_received_total", listener) == Double(datagrams.count))
        #expect(value(samples, "statsrelay_bytes_received_total", listener) == Double(datagrams.reduce(0) { $0 + $1.utf8.count }))
        #expect(value(samples, "statsrelay_lines_received_total", listener) == 97)
        #expect(value(samples, "statsrelay_lines_forwarded_total") == 90)
        #expect(value(samples, "statsrelay_lines_dropped_total", ["reason": "missing_colon"]) == 5)
        #expect(value(samples, "statsrelay_lines_dropped_total", ["reason": "empty_name"]) == 2)
        for (index, backend) in backends.enumerated() {
            let label = ["backend": backend.spec]
            #expect(value(samples, "statsrelay_backend_lines_sent_total", label) == Double(received.lines[index].count))
            #expect(value(samples, "statsrelay_backend_packets_sent_total", label) == Double(received.datagrams[index].count))
            #expect(value(samples, "statsrelay_backend_bytes_sent_total", label)
                    == Double(received.datagrams[index].reduce(0) { $0 + $1.utf8.count }))
            #expect(value(samples, "statsrelay_backend_lines_dropped_total", label.merging(["reason": "refused"]) { $1 }) == 0)
            #expect(value(samples, "statsrelay_backend_up", label) == 1)
        }
        #expect(value(samples, "statsrelay_io_driver_info", ["driver": driver.rawValue]) == 1)
        #expect(value(samples, "statsrelay_workers") == 1)
        #expect(value(samples, "statsrelay_build_info", ["version": "test"]) == 1)
        let result = try promtoolCheck(text)
        #expect(result.status == 0, "promtool: \(result.output)")
        #expect(result.output.isEmpty, "promtool lint findings: \(result.output)")
    }

    @Test("/healthz is 200 ok while the relay runs, 503 stopping once a stop is asked for; /metrics still answers", arguments: ioDrivers)
    func healthzRunningThenStopping(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let subject = try AdminRelay(backends: [backend], driver: driver)
        defer { subject.admin.stop() }
        #expect(subject.relay.relay.driver == driver)
        let running = try AdminClient.get("/healthz", from: subject.admin.address)
        #expect(running == AdminClient.Response(status: 200, body: "ok\n"))
        try send(["before.stop:1|c"], to: subject.relay.address)
        _ = try collect(from: [backend], expectedLines: 1)

        subject.relay.relay.stop()
        let stopping = try AdminClient.get("/healthz", from: subject.admin.address)
        #expect(stopping == AdminClient.Response(status: 503, body: "stopping: draining and flushing before exit\n"))
        let (_, failures) = subject.relay.relay.wait()
        #expect(failures.isEmpty)
        let (samples, _) = try scrape(subject.admin.address)
        #expect(value(samples, "statsrelay_lines_forwarded_total") == 1, "the final counters are served after the stop")
        #expect(try AdminClient.get("/healthz", from: subject.admin.address).status == 503)
    }

    @Test("requests are bounded: only GET and HEAD, a few KiB of headers, no request data echoed", arguments: ioDrivers)
    func requestBounds(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let subject = try AdminRelay(backends: [backend], driver: driver)
        defer {
            subject.admin.stop()
            _ = subject.relay.stop()
        }
        #expect(subject.relay.relay.driver == driver)
        let post = try rawHTTPExchange(Array("POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc".utf8), with: subject.admin.address)
        #expect(post.hasPrefix("HTTP/1.1 405 Method Not Allowed\r\n"), "\(post)")
        #expect(post.contains("\r\nAllow: GET, HEAD\r\n"))
        let huge = "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Filler: \(String(repeating: "a", count: 64 << 10))\r\n\r\n"
        let refused = try rawHTTPExchange(Array(huge.utf8), with: subject.admin.address)
        #expect(!refused.contains("200 OK"), "an oversized request was answered: \(refused.prefix(200))")
        #expect(!refused.contains("aaaa"), "request data came back")
        let unknown = try rawHTTPExchange(Array("GET /secret?<script> HTTP/1.1\r\nHost: x\r\n\r\n".utf8), with: subject.admin.address)
        #expect(unknown.hasPrefix("HTTP/1.1 404 Not Found\r\n"))
        #expect(!unknown.contains("<script>"), "request data came back")
        // Still serving after all that.
        #expect(try AdminClient.get("/healthz", from: subject.admin.address).status == 200)
    }

    @Test("HEAD is answered as GET without the body; a method the parser does not know is 405 with Allow", arguments: ioDrivers)
    func methods(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let subject = try AdminRelay(backends: [backend], driver: driver)
        defer {
            subject.admin.stop()
            _ = subject.relay.stop()
        }
        #expect(subject.relay.relay.driver == driver)
        let get = try rawHTTPExchange(Array("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".utf8), with: subject.admin.address)
        let head = try rawHTTPExchange(Array("HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n".utf8), with: subject.admin.address)
        #expect(get.hasPrefix("HTTP/1.1 200 OK\r\n") && get.hasSuffix("\r\n\r\nok\n"), "\(get)")
        #expect(head == String(get.dropLast("ok\n".count)), "HEAD: \(head)")
        #expect(head.contains("\r\nContent-Length: 3\r\n"))
        let root = try rawHTTPExchange(Array("HEAD / HTTP/1.0\r\n\r\n".utf8), with: subject.admin.address)
        #expect(root.hasPrefix("HTTP/1.0 200 OK\r\n") && root.hasSuffix("\r\n\r\n"), "\(root)")
        for method in ["BREW", "get", "PROPFIND", "DELETE"] {
            let answer = try rawHTTPExchange(Array("\(method) /metrics HTTP/1.1\r\nHost: x\r\n\r\n".utf8), with: subject.admin.address)
            #expect(answer.hasPrefix("HTTP/1.1 405 Method Not Allowed\r\n"), "\(method): \(answer)")
            #expect(answer.contains("\r\nAllow: GET, HEAD\r\n"), "\(method): \(answer)")
            #expect(answer.hasSuffix("\r\n\r\nonly GET and HEAD are served\n"), "\(method): \(answer)")
        }
    }

    @Test("/healthz answers 200 while every connection slot is held by a client that sends nothing", arguments: ioDrivers)
    func healthzBesideIdleConnections(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let subject = try AdminRelay(backends: [backend], driver: driver)
        defer {
            subject.admin.stop()
            _ = subject.relay.stop()
        }
        #expect(subject.relay.relay.driver == driver)
        // The server accepts in arrival order, so these fill every slot before the probe comes.
        let idle = try (0..<AdminServer.maximumConnections).map { _ in try openConnection(to: subject.admin.address) }
        defer { idle.forEach { close($0) } }
        #expect(try AdminClient.get("/healthz", from: subject.admin.address) == AdminClient.Response(status: 200, body: "ok\n"))
    }

    @Test("a connection that has not completed its request head is closed at the head deadline, not the whole-request one", arguments: ioDrivers)
    func requestHeadDeadline(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let subject = try AdminRelay(backends: [backend], driver: driver)
        defer {
            subject.admin.stop()
            _ = subject.relay.stop()
        }
        #expect(subject.relay.relay.driver == driver)
        let descriptor = try openConnection(to: subject.admin.address)
        defer { close(descriptor) }
        let partial = Array("GET /healthz HTTP/1.1\r\nHost: x\r\n".utf8)
        #expect(partial.withUnsafeBytes { send(descriptor, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) } == partial.count)
        // Waits less than the whole-request deadline (5 s) for the server's close (end of file).
        var timeout = timeval(tv_sec: 4, tv_usec: 0)
        setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var buffer = [UInt8](repeating: 0, count: 512)
        var received = -1
        for _ in 0..<100 {
            received = buffer.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress, $0.count, 0) }
            if received >= 0 || errno != EINTR { break }
        }
        #expect(received == 0, "the server did not close the connection within 4 s (recv \(received), errno \(errno))")
    }

    @Test("--admin none opens no TCP listener; the default --admin opens one", arguments: ioDrivers)
    func adminNone(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let off = try RelayProcess(driver: driver, ["--admin", "none", "--bind", "127.0.0.1", "--port", "0", "--threads", "1", backend.spec])
        _ = try off.listenAddress()
        #expect(off.standardError.contains("io_backend=\(driver.rawValue)"))
        #expect(try !holdsListeningTCPSocket(pid: off.process.processIdentifier))
        #expect(!off.standardError.contains("admin endpoint"))
        off.signal(SIGTERM)
        #expect(off.waitForExit() == 0)

        let on = try RelayProcess(driver: driver, ["--admin", "127.0.0.1:0", "--bind", "127.0.0.1", "--port", "0", "--threads", "1", backend.spec])
        let address = try adminAddress(of: on)
        #expect(try holdsListeningTCPSocket(pid: on.process.processIdentifier))
        #expect(try AdminClient.get("/healthz", from: address).status == 200)
        on.signal(SIGTERM)
        #expect(on.waitForExit() == 0)
    }

    @Test("the admin thread stays off the workers' CPUs when --cpus leaves one free", arguments: ioDrivers)
    func adminThreadOffWorkerCPUs(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let allowed = WorkerThread.allowedCPUs
        guard allowed.count >= 2 else {
            try Test.cancel("this process may use only CPU \(allowed.map(String.init).joined()): no CPU is left free of workers")
        }
        let backend = try TestBackend()
        let relay = try RelayProcess(driver: driver, [
            "--admin", "127.0.0.1:0", "--bind", "127.0.0.1", "--port", "0", "--threads", "1", "--cpus", "\(allowed[0])", backend.spec,
        ])
        _ = try adminAddress(of: relay)
        defer {
            relay.signal(SIGTERM)
            _ = relay.waitForExit()
        }
        // Each thread's name and the CPUs it may run on, from /proc.
        let tasks = "/proc/\(relay.process.processIdentifier)/task"
        var threads: [String: String] = [:]
        for task in try FileManager.default.contentsOfDirectory(atPath: tasks) {
            let name = try String(contentsOfFile: "\(tasks)/\(task)/comm", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
            let status = try String(contentsOfFile: "\(tasks)/\(task)/status", encoding: .utf8)
            let cpus = status.split(separator: "\n").first { $0.hasPrefix("Cpus_allowed_list:") }?.split(separator: "\t").last
            threads[name] = cpus.map(String.init)
        }
        #expect(threads["statsrelay-w0"] == "\(allowed[0])", "\(threads)")
        let admin = try #require(threads.first { $0.key.hasPrefix("NIO-ELT") }, "no event-loop thread: \(threads)")
        let adminCPUs = admin.value
        #expect(!(try CPUList.parse(adminCPUs)).contains(allowed[0]), "admin thread may run on the worker's CPU: \(adminCPUs)")
        #expect(!(try CPUList.parse(adminCPUs)).isEmpty)
    }

    @Test("a second relay on a taken admin port exits 71 naming the address, before it relays anything", arguments: ioDrivers)
    func adminPortTaken(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let first = try RelayProcess(driver: driver, ["--admin", "127.0.0.1:0", "--bind", "127.0.0.1", "--port", "0", "--threads", "1", backend.spec])
        let address = try adminAddress(of: first)
        defer {
            first.signal(SIGTERM)
            _ = first.waitForExit()
        }
        let second = try RelayProcess.run([
            "--io-backend", driver.rawValue, "--admin", "\(address)", "--bind", "127.0.0.1", "--port", "0", "--threads", "1", backend.spec,
        ])
        #expect(second.status == 71)
        #expect(second.error.contains(
            "bind tcp \(address) (--admin): Address already in use (errno 98); another process (a second relay on this host?) holds the admin port: give each relay its own --admin ADDR:PORT, or --admin none"),
            "stderr: \(second.error)")
        #expect(!second.error.contains("listening on"))
        #expect(try AdminClient.get("/healthz", from: address).status == 200, "the first relay still serves")
    }

    @Test("statsrelay status prints each backend's state and lines sent, the totals and the driver; exit 69 when nothing answers", arguments: ioDrivers)
    func statusCommand(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backends = try (0..<2).map { _ in try TestBackend() }
        // A port below the ephemeral range (`TestPorts`): once the relay exits, no socket of
        // another test is given it, so "Connection refused" is the relay's own absence.
        let admin = "127.0.0.1:\(try unusedTCPPort())"
        let relay = try RelayProcess(driver: driver, ["--admin", admin, "--bind", "127.0.0.1", "--port", "0", "--threads", "1"] + backends.map(\.spec))
        let address = try adminAddress(of: relay)
        let lines = (0..<40).map { "status.\($0):1|c" }
        try send(lines, to: try relay.listenAddress())
        let received = try collect(from: backends, expectedLines: lines.count)
        _ = try scrape(address) { samples in
            samples.filter { $0.name == "statsrelay_backend_lines_sent_total" }.reduce(0) { $0 + $1.value } == 40
        }
        let status = try RelayProcess.run(["status", "--admin", "\(address)", "--interval", "0"])
        #expect(status.status == 0, "stderr: \(status.error)")
        let rows = status.output.split(separator: "\n").map { $0.split(separator: " ").map(String.init) }
        #expect(status.output.hasPrefix("statsrelay 0.1.0 at \(address): healthy (ok)\n"), "\(status.output)")
        #expect(status.output.contains("\nio driver \(driver.rawValue), 1 workers; ring of 2 backends, hash jump, fingerprint "))
        for (index, backend) in backends.enumerated() {
            let row = try #require(rows.first { $0.first == backend.spec }, "no row for \(backend.spec): \(status.output)")
            // BACKEND STATE SINCE LINES-SENT LINES/S DROPPED DOUBTED HELD
            #expect(row.count == 8)
            #expect(row[1] == "up")
            #expect(row[3] == "\(received.lines[index].count)")
            #expect(row[4] == "-")
            #expect(Array(row[5...]) == ["0", "0", "0"])
        }
        #expect(rows.contains(["total", "40", "-", "0", "0", "0"]), "\(status.output)")
        #expect(status.output.contains("\nreceived: 40 datagrams, 40 lines (-/s); forwarded 40 lines\n"))
        #expect(status.output.contains("\nlines dropped: none\n"))

        relay.signal(SIGTERM)
        #expect(relay.waitForExit() == 0)
        let unreachable = try RelayProcess.run(["status", "--admin", "\(address)", "--interval", "0"])
        #expect(unreachable.status == 69)
        #expect(unreachable.error.contains("statsrelay status: connect tcp \(address): Connection refused (errno 111)"), "\(unreachable.error)")
    }
}

@Suite("statsrelay status against a server that is not a relay", .timeLimit(.minutes(1)), .onOwnThread)
struct StatusAgainstOtherServersTests {
    @Test("a server that never answers: timed out, not reset")
    func silentServer() throws {
        let server = try FakeAnswerServer(answer: nil)
        defer { server.stop() }
        #expect(throws: SystemCallError.self) { try AdminClient.get("/metrics", from: server.address, timeout: .milliseconds(300)) }
        do {
            _ = try AdminClient.get("/metrics", from: server.address, timeout: .milliseconds(300))
        } catch {
            #expect(error.description == "GET http://\(server.address)/metrics: Connection timed out (errno 110); no complete answer within 300ms")
        }
    }

    @Test("a server answering something that is not HTTP: not an HTTP response")
    func garbageServer() throws {
        let server = try FakeAnswerServer(answer: Array(String(repeating: "\u{0}\u{7f}SSH-2.0-OpenSSH\r\n", count: 10).utf8))
        defer { server.stop() }
        do {
            _ = try AdminClient.get("/metrics", from: server.address, timeout: .seconds(5))
            Issue.record("garbage was taken for an HTTP response")
        } catch {
            #expect(error.description == "GET http://\(server.address)/metrics: Protocol error (errno 71); the answer is not an HTTP response")
        }
    }

    @Test("an HTTP server answering 200 without statsrelay_build_info: exit 69, not a statsrelay admin endpoint")
    func otherHTTPServer() throws {
        let server = try FakeAnswerServer(answer: Array("HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nhello\n".utf8))
        defer { server.stop() }
        let status = try RelayProcess.run(["status", "--admin", "\(server.address)", "--interval", "0"])
        #expect(status.status == 69)
        #expect(status.output.isEmpty, "\(status.output)")
        #expect(status.error.contains(
            "statsrelay status: GET http://\(server.address)/metrics answered 200 without statsrelay_build_info: not a statsrelay admin endpoint"),
            "\(status.error)")
    }
}
