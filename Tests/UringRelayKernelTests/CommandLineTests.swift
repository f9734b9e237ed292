@testable import RelayKernel
import Foundation
import Glibc
import Synchronization
import Testing
@testable import UringRelay

@Suite("statsrelay executable", .serialized, .timeLimit(.minutes(1)), .onOwnThread)
struct ProcessTests {
    @Test("SIGTERM sends every pending batch and exits 0", arguments: ioDrivers)
    func sigtermFlushes(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backends = try (0..<2).map { _ in try TestBackend() }
        let relay = try RelayProcess(driver: driver, ["--bind", "127.0.0.1", "--port", "0", "--threads", "1", "--flush-interval", "60s"] + backends.map(\.spec))
        let address = try relay.listenAddress()
        let lines = (0..<300).map { "pending.\($0):1|c" }
        try send(lines, to: address)
        // With a 60 s flush interval nothing leaves on a timer: whatever the relay has read sits
        // in open batches, the rest in its socket, until SIGTERM drains and flushes both.
        relay.signal(SIGTERM)
        #expect(relay.waitForExit() == 0)
        let received = try collect(from: backends, expectedLines: lines.count, seconds: 5)
        #expect((received.lines[0] + received.lines[1]).sorted() == lines.sorted())
        #expect(relay.counter("statsrelay.lines_forwarded") == 300)
    }

    @Test("SIGTERM with more queued than a short --shutdown-timeout drains: the relay stops in time, sends every line it forwarded, and counts the rest", arguments: ioDrivers)
    func sigtermPastTheDrainBudget(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backends = try (0..<2).map { _ in try TestBackend() }
        let timeout = 0.015
        let relay = try RelayProcess(driver: driver, [
            "--bind", "127.0.0.1", "--port", "0", "--threads", "1", "--flush-interval", "60s", "--rcvbuf", "64M",
            "--shutdown-timeout", "15ms",
        ] + backends.map(\.spec))
        let address = try relay.listenAddress()
        try #require(relay.suspend(), "the relay did not stop")
        // 10 ms of draining at about a million datagrams a second cannot take them all.
        let queued = (0..<60_000).map { "backlog.\($0 % 500):1|c" }
        try send(queued, to: address)
        let traffic = try SteadySender(to: address, maxDatagrams: 400_000)
        let signalled = MonotonicClock.nanoseconds()
        relay.signal(SIGTERM)
        relay.signal(SIGCONT)
        let status = relay.waitForExit(seconds: 10)
        let stopSeconds = Double(MonotonicClock.nanoseconds() - signalled) / 1e9
        traffic.stop()
        #expect(status == 0)
        // The deadline is the relay's own; the slack is for this side (signal delivery, the
        // report, the process exit, a loaded machine), not for the relay's stop.
        #expect(stopSeconds < timeout + stopSlackSeconds, "SIGTERM to exit took \(stopSeconds) s with a \(timeout) s --shutdown-timeout")
        let report = lastReport(in: relay.standardError)
        let forwarded = try #require(report["statsrelay.lines_forwarded"])
        let received = try collect(from: backends, expectedLines: Int(forwarded), seconds: 5)
        #expect(forwarded > 0)
        #expect(forwarded < UInt64(queued.count), "the drain budget ended the drain before the socket was empty")
        #expect(UInt64(received.totalLines) == forwarded)
        // What was left is counted: every datagram queued before the signal was received, or
        // dropped by the kernel (a full buffer), or still queued when receiving stopped and
        // counted then; none of those sent later is counted twice.
        let accounted = (report["statsrelay.datagrams_received"] ?? 0) + (report["statsrelay.datagrams_dropped.at_exit"] ?? 0)
            + (report["statsrelay.datagrams_dropped.kernel"] ?? 0)
        #expect(accounted <= UInt64(queued.count + traffic.sent))
        #expect((report["statsrelay.datagrams_dropped.at_exit"] ?? 0) > 0, "datagrams left in the socket were not counted")
        // The listener takes nothing new once receiving stops, and what it holds is counted to
        // the end, unless the count runs out of its time (at least 50 ms: a loaded machine and
        // a debug build take some 30 000 datagrams in that); then the listener says so.
        if report["statsrelay.listeners_closed_uncounted"] ?? 0 == 0 {
            #expect(accounted >= UInt64(queued.count), "of \(queued.count) datagrams queued before SIGTERM only \(accounted) are accounted for")
        } else {
            #expect(report["statsrelay.listeners_closed_uncounted"] == 1, "one listener")
        }
        // ... and every forwarded line was handed to the kernel (none failed, none refused) and
        // ends as sent or, since a 15 ms budget cannot wait out the 200 ms confirmation, as
        // unconfirmed: never lost from the count, never counted twice.
        #expect(report["statsrelay.send_errors"] == 0, "the final sends were submitted and completed")
        #expect(report["statsrelay.lines_dropped.refused"] == 0)
        let sent = backends.map { report["statsrelay.backend.lines_sent{backend=\"\($0.spec)\"}"] ?? 0 }.reduce(0, +)
        #expect(sent + unconfirmedAtExit(in: report) == forwarded, "sent \(sent), unconfirmed \(unconfirmedAtExit(in: report))")
    }

    @Test("an idle worker sleeps: it does not wake up thousands of times a second", arguments: ioDrivers)
    func idleWorkerSleeps(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let relay = try RelayProcess(driver: driver, ["--bind", "127.0.0.1", "--port", "0", "--threads", "1", backend.spec])
        _ = try relay.listenAddress()
        func workerSwitches() throws -> Int {
            let tasks = "/proc/\(relay.process.processIdentifier)/task"
            for task in try FileManager.default.contentsOfDirectory(atPath: tasks) {
                let comm = try String(contentsOfFile: "\(tasks)/\(task)/comm", encoding: .utf8)
                guard comm.hasPrefix("statsrelay-w0") else { continue }
                let status = try String(contentsOfFile: "\(tasks)/\(task)/status", encoding: .utf8)
                let line = status.split(separator: "\n").first { $0.hasPrefix("voluntary_ctxt_switches:") }
                return Int(line?.split(separator: "\t").last ?? "") ?? -1
            }
            return -1
        }
        let before = try workerSwitches()
        // A measurement window, not a synchronisation: half a second of idling.
        usleep(500_000)
        let after = try workerSwitches()
        relay.signal(SIGTERM)
        #expect(relay.waitForExit() == 0)
        #expect(before >= 0)
        #expect(after - before < 50, "an idle worker woke \(after - before) times in 0.5 s")
    }

    @Test("datagrams queued in the socket before SIGTERM are all relayed", arguments: ioDrivers)
    func queuedBeforeSignal(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backends = [try TestBackend()]
        let relay = try RelayProcess(driver: driver, ["--bind", "127.0.0.1", "--port", "0", "--threads", "1", "--rcvbuf", "16M"] + backends.map(\.spec))
        let address = try relay.listenAddress()
        try #require(relay.suspend(), "the relay did not stop")
        let lines = (0..<2_000).map { "queued.\($0 % 50):\($0)|c" }
        try send(lines, to: address)
        #expect(udpReceiveQueues(port: address.port).allSatisfy { $0 > 0 }, "the datagrams must wait in the socket")
        relay.signal(SIGTERM)
        relay.signal(SIGCONT)
        #expect(relay.waitForExit() == 0)
        let received = try collect(from: backends, expectedLines: lines.count, seconds: 5)
        #expect(received.lines[0].sorted() == lines.sorted())
    }

    @Test("with two workers SIGTERM wakes both: datagrams queued on either worker's socket are all relayed", arguments: ioDrivers)
    func twoWorkersDrainOnSignal(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backends = try (0..<2).map { _ in try TestBackend() }
        let relay = try RelayProcess(driver: driver,
            ["--bind", "127.0.0.1", "--port", "0", "--rcvbuf", "16M", "--flush-interval", "60s"] + twoWorkerArguments
                + backends.map(\.spec))
        let address = try relay.listenAddress()  // logged once both workers are up
        try #require(relay.suspend(), "the relay did not stop")
        let (flows, queues) = try spreadOverWorkers(address) { flow in (0..<50).map { "drain.two.\(flow).\($0 % 10):\($0)|c" } }
        let lines = flows.flatMap { $0 }
        #expect(queues.count == 2 && queues.allSatisfy { $0 > 0 }, "queued bytes per worker socket: \(queues)")
        relay.signal(SIGTERM)
        relay.signal(SIGCONT)
        #expect(relay.waitForExit() == 0)
        let received = try collect(from: backends, expectedLines: lines.count, seconds: 5)
        #expect((received.lines[0] + received.lines[1]).sorted() == lines.sorted())
        #expect(relay.counter("statsrelay.lines_forwarded") == UInt64(lines.count))
    }

    @Test("a burst larger than the receive buffers loses nothing: an exhausted buffer ring is counted and re-armed (uring); recvmmsg takes it in batches of 2 (portable)", arguments: ioDrivers)
    func bufferRingExhausted(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backends = [try TestBackend()]
        let relay = try RelayProcess(driver: driver, ["--bind", "127.0.0.1", "--port", "0", "--threads", "1", "--receive-buffers", "2"] + backends.map(\.spec))
        let address = try relay.listenAddress()
        try #require(relay.suspend(), "the relay did not stop")
        let lines = (0..<500).map { "burst.\($0):1|c" }
        try send(lines, to: address)
        relay.signal(SIGCONT)
        let received = try collect(from: backends, expectedLines: lines.count)
        relay.signal(SIGTERM)
        #expect(relay.waitForExit() == 0)
        #expect(received.lines[0].sorted() == lines.sorted())
        let exhausted = relay.counter("statsrelay.buffer_ring_exhausted") ?? 0
        if driver == .portable {
            #expect(exhausted == 0, "the portable driver has no buffer ring")
        } else {
            #expect(exhausted > 0)
        }
    }

    @Test("the Go StatsRelay's single-dash flags are accepted and take effect: -bind, -port, -packetlen, -bufsize", arguments: ioDrivers)
    func goFlags(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        // A free port below the ephemeral range (`unusedPort()`), not the default 8125.
        let port = try unusedPort()
        // A 60 s flush interval: batches leave only when full (or at the stop), so their size is
        // what -packetlen allows.
        let relay = try RelayProcess(driver: driver, [
            "-bind", "127.0.0.1", "-port", "\(port)", "-packetlen", "512", "-bufsize", "1048576",
            "--threads", "1", "--flush-interval", "60s", backend.spec,
        ])
        let address = try relay.listenAddress()
        #expect(address.port == port)
        let startup = relay.logLine(containing: "listening on ") ?? ""
        #expect(startup.contains("listening on 127.0.0.1:\(port)"), "\(startup)")
        #expect(startup.contains("packet_len=512"), "\(startup)")
        #expect(startup.contains("rcvbuf_requested=1048576"), "\(startup)")
        let lines = (0..<300).map { "go.flag.\($0):\($0)|c" }
        try send(stride(from: 0, to: lines.count, by: 30).map { lines[$0..<$0 + 30].joined(separator: "\n") }, to: address)
        relay.signal(SIGINT)
        #expect(relay.waitForExit() == 0)
        let received = try collect(from: [backend], expectedLines: lines.count, seconds: 5)
        #expect(received.lines[0].sorted() == lines.sorted())
        let longest = lines.map { $0.utf8.count + 1 }.max()!
        let sizes = received.datagrams[0].map(\.utf8.count)
        #expect(sizes.allSatisfy { $0 <= 512 }, "datagram sizes \(sizes)")
        // Every batch but the last closed because the next line did not fit in 512 bytes.
        #expect(sizes.dropLast().allSatisfy { $0 > 512 - longest }, "datagram sizes \(sizes)")
    }

    @Test("--cpus pins each worker thread to its CPU", arguments: ioDrivers)
    func pinsWorkers(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let cpus = WorkerThread.allowedCPUs
        let cpu = try #require(cpus.last)
        let backend = try TestBackend()
        let relay = try RelayProcess(driver: driver, ["--bind", "127.0.0.1", "--port", "0", "--threads", "1", "--cpus", "\(cpu)", backend.spec])
        _ = try relay.listenAddress()
        let tasks = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(relay.process.processIdentifier)/task")
        var pinned: [String] = []
        for task in tasks {
            let base = "/proc/\(relay.process.processIdentifier)/task/\(task)"
            let name = try String(contentsOfFile: base + "/comm", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
            guard name == "statsrelay-w0" else { continue }
            let status = try String(contentsOfFile: base + "/status", encoding: .utf8)
            pinned += status.split(separator: "\n").filter { $0.hasPrefix("Cpus_allowed_list:") }
                .map { String($0.split(separator: "\t").last ?? "") }
        }
        relay.signal(SIGTERM)
        #expect(relay.waitForExit() == 0)
        #expect(pinned == ["\(cpu)"])
    }

    @Test("bad arguments exit 64 naming what was wrong", arguments: [
        (["127.0.0.1"], "invalid backend '127.0.0.1'"),
        (["127.0.0.1:99999"], "port must be 1-65535"),
        ([], "at least one backend"),
        (["--packet-len", "1", "127.0.0.1:9"], "--packet-len"),
        (["--flush-interval", "soon", "127.0.0.1:9"], "--flush-interval 'soon'"),
        (["--bind", "example", "127.0.0.1:9"], "--bind 'example'"),
        (["--no-such-flag", "127.0.0.1:9"], "--no-such-flag"),
        (["--on-backend-down", "retry", "127.0.0.1:9"], "The value 'retry' is invalid for '--on-backend-down <policy>'"),
        (["--health-check", "http", "127.0.0.1:9"], "The value 'http' is invalid for '--health-check <mode>'"),
        (["--io-backend", "epoll", "127.0.0.1:9"], "The value 'epoll' is invalid for '--io-backend"),
        (["--health-interval", "1s", "--health-timeout", "2s", "127.0.0.1:9"], "--health-timeout '2s'"),
        (["--receive-buffers", "3", "127.0.0.1:9"], "--receive-buffers '3'"),
        (["--cpus", "3-1", "127.0.0.1:9"], "--cpus '3-1'"),
        (["--threads", "2", "--cpus", "0", "127.0.0.1:9"], "lists 1 CPUs for 2 threads"),
        (["--threads", "0", "127.0.0.1:9"], "--threads '0'"),
        (["--max-datagram", "70000", "127.0.0.1:9"], "--max-datagram '70000'"),
        (["--shutdown-timeout", "1ms", "127.0.0.1:9"], "--shutdown-timeout '1ms'"),
    ])
    func badArguments(_ arguments: [String], _ message: String) throws {
        let result = try RelayProcess.run(arguments)
        #expect(result.status == 64)
        #expect(result.error.contains(message), "stderr: \(result.error)")
    }

    @Test("a busy port exits 71, reported as operation, address and reason", arguments: ioDrivers)
    func busyPort(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let holder = try UDPSocket.bound(to: SocketAddress(numericHost: "127.0.0.1", port: 0)!)
        let port = holder.localAddress.port
        let result = try RelayProcess.run(["--io-backend", driver.rawValue, "--bind", "127.0.0.1", "--port", "\(port)", "--threads", "1", "127.0.0.1:9"])
        #expect(result.status == 71)
        #expect(result.error.contains("bind udp 127.0.0.1:\(port): Address already in use (errno 98)"), "stderr: \(result.error)")
    }

    @Test("statsrelay hash prints the backend each name goes to")
    func hashCommand() throws {
        let result = try RelayProcess.run(["hash", "--backends", "a:1,b:2,c:3", "foo", "bar", "foobar", "changed", "a", "statsrelay.statsProcessed:1|c"])
        #expect(result.status == 0)
        let routed = result.output.split(separator: "\n").map { $0.split(separator: " ").prefix(2).joined(separator: " ") }
        #expect(routed == ["foo b:2", "bar a:1", "foobar b:2", "changed a:1", "a c:3", "statsrelay.statsProcessed c:3"])
    }

    @Test("statsrelay hash --health-check shows where names go now, with a backend down")
    func hashWithHealth() throws {
        let ports = try (0..<3).map { _ in try FakeHealthPort() }
        ports[1].close()
        let backends = ports.map { "127.0.0.1:\($0.port)" }
        let result = try RelayProcess.run(["hash", "--backends", backends.joined(separator: ","), "--health-check", "tcp", "--health-timeout", "200ms", "foo", "bar"])
        #expect(result.status == 0)
        #expect(result.error.contains("backend \(backends[1]) is down: connect: Connection refused"))
        let lines = result.output.split(separator: "\n").map(String.init)
        // foo's primary is backend 1 (B); with it down its first live candidate is backend 2
        // (Tests/Vectors/rehash_vectors.py); bar's primary, backend 0, is up.
        #expect(lines.first?.hasPrefix("foo \(backends[2]) ") == true, "\(lines)")
        #expect(lines.first?.hasSuffix("(\(backends[1]) is down: rehashed)") == true)
        #expect(lines.last?.hasPrefix("bar \(backends[0]) ") == true)
    }

    @Test("--version prints the version")
    func version() throws {
        let result = try RelayProcess.run(["--version"])
        #expect(result.status == 0)
        #expect(result.output.hasPrefix("statsrelay "))
    }
}
