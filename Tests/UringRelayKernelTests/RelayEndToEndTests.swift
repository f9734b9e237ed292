@testable import RelayKernel
import Foundation
import Testing
@testable import UringRelay

@Suite("Relay end to end on loopback", .serialized, .timeLimit(.minutes(1)), .onOwnThread)
struct RelayEndToEndTests {
    @Test("thousands of lines reach three backends, each exactly once where the hash sends it; junk is counted", arguments: ioDrivers)
    func relaysEveryLineOnce(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backends = try (0..<3).map { _ in try TestBackend() }
        let relay = try InProcessRelay(backends: backends, driver: driver)
        var expected: [[String]] = [[], [], []]
        var datagrams: [String] = []
        var line = 0
        var junk = 0
        for datagram in 0..<1_500 {
            var lines: [String] = []
            for _ in 0..<(1 + datagram % 7) {
                let text: String
                switch line % 5 {
                case 0: text = "api.requests.host-\(line % 97).status_200:\(line)|c"
                case 1: text = "db.query.latency.\(line % 31):\(line).5|ms|@0.1"
                case 2: text = "queue.depth.q\(line % 13):\(line)|g"
                case 3: text = "http.req.\(line % 11):1|c|#env:prod,line:\(line)"
                default: text = "users.unique:\(line)|s"
                }
                expected[expectedBackend(of: text, backends: 3)].append(text)
                lines.append(text)
                line += 1
            }
            if datagram % 50 == 0 {
                lines.insert(":nameless|c", at: 0)
                lines.append("no colon at all")
                junk += 2
            }
            datagrams.append(lines.joined(separator: datagram % 2 == 0 ? "\n" : "\r\n"))
        }
        try send(datagrams, to: relay.address)
        let received = try collect(from: backends, expectedLines: line)
        let counters = relay.stop()
        let late = try collect(from: backends, expectedLines: 0, seconds: 0.2)
        #expect(late.totalLines == 0, "lines arrived after the relay reported them all sent")
        for backend in 0..<3 {
            #expect(received.lines[backend].sorted() == expected[backend].sorted(), "backend \(backend)")
            for datagram in received.datagrams[backend] {
                #expect(datagram.utf8.count <= 1400)
                #expect(datagram.hasSuffix("\n"))
            }
        }
        #expect(counters[.datagramsReceived] == UInt64(datagrams.count))
        #expect(counters[.linesForwarded] == UInt64(line))
        #expect(counters[.linesDroppedEmptyName] + counters[.linesDroppedMissingColon] == UInt64(junk))
        #expect((0..<3).map { counters[.linesSent, backend: $0] } == expected.map { UInt64($0.count) })
        #expect(counters[.sendErrors] == 0)
    }

    @Test("a line longer than the packet length arrives alone and whole", arguments: ioDrivers)
    func longLineAlone(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backends = [try TestBackend()]
        let relay = try InProcessRelay(backends: backends, driver: driver) { $0.packetBytes = 200 }
        let long = "big.gauge:" + String(repeating: "7", count: 900) + "|g"
        try send(["a:1|c\n\(long)\nb:2|c"], to: relay.address)
        let received = try collect(from: backends, expectedLines: 3)
        _ = relay.stop()
        #expect(received.datagrams[0].contains(long))
        #expect(received.lines[0].sorted() == ["a:1|c", "b:2|c", long].sorted())
    }

    @Test("a datagram larger than --max-datagram is dropped whole and counted; its neighbours are relayed", arguments: ioDrivers)
    func truncatedDatagram(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backends = [try TestBackend()]
        let relay = try InProcessRelay(backends: backends, driver: driver) { $0.maxDatagramBytes = 512 }
        let oversize = (0..<60).map { "trunc.\($0):1|c" }.joined(separator: "\n")
        #expect(oversize.utf8.count > 512)
        let exact = "x:" + String(repeating: "1", count: 510)
        try send(["before:1|c", oversize, exact, "after:1|c"], to: relay.address)
        let received = try collect(from: backends, expectedLines: 3)
        let counters = relay.stop()
        #expect(received.lines[0] == ["before:1|c", exact, "after:1|c"])
        #expect(counters[.datagramsTruncated] == 1)
        #expect(counters[.datagramsReceived] == 3)
    }

    @Test("a backend refusing datagrams (nothing listening): none of its lines is counted as sent, each is refused or failed, and the others get every line", arguments: ioDrivers)
    func refusingBackend(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let liveBackend = try TestBackend()
        // A port with nothing listening, below the ephemeral range: a port bound and closed again
        // could be taken by another test's socket meanwhile, which would then receive its lines.
        let deadPort = try unusedPort()
        var configuration = RelayConfiguration(backends: [
            try BackendAddress(parsing: liveBackend.spec), try BackendAddress(parsing: "127.0.0.1:\(deadPort)"),
        ])
        configuration.bindHost = "127.0.0.1"
        configuration.port = 0
        configuration.threads = 1
        configuration.flushIntervalNanoseconds = 1_000_000
        configuration.ioBackend = driver
        let relay = try Relay(configuration: configuration, logger: .init(label: "test"))
        let address = try relay.start().listen
        #expect(relay.driver == driver)
        var toLive: [String] = []
        var receivedLive: [String] = []
        var toDead = 0
        for round in 0..<20 {
            var datagram: [String] = []
            var live = 0
            for index in 0..<20 {
                let line = "m.\(round).\(index):1|c"
                if expectedBackend(of: line, backends: 2) == 0 {
                    toLive.append(line)
                    live += 1
                } else {
                    toDead += 1
                }
                datagram.append(line)
            }
            try send([datagram.joined(separator: "\n")], to: address)
            // Each round waits for the live backend, so the dead one is sent to again and again
            // after its ICMP refusal has been reported.
            receivedLive += try collect(from: [liveBackend], expectedLines: live, settleMilliseconds: 5).lines[0]
        }
        relay.stop()
        let (counters, failures) = relay.wait()
        #expect(failures.isEmpty)
        #expect(toDead > 0)
        // Every datagram reached the relay and every line was taken (a miss here says the loss
        // is before the routing: seen once, one whole datagram, under ThreadSanitizer in a local
        // CI run; likely a stray SO_REUSEPORT socket of another test, docs/reliability.md).
        #expect(counters[.datagramsReceived] == 20, "kernel drops: \(counters[.datagramsDroppedKernel])")
        #expect(counters[.linesReceived] == 400)
        #expect(receivedLive.sorted() == toLive.sorted())
        #expect(counters[.linesSent, backend: 0] == UInt64(toLive.count))
        // Issue 8, defect 4: the ICMP refusal of packet N used to fail packet N+1, and N was
        // counted as sent. Now the error queue attributes each refusal to its packet.
        #expect(counters[.linesSent, backend: 1] == 0, "a delivery to a dead backend was claimed")
        #expect(counters[.packetsRefused, backend: 1] > 0)
        #expect(counters[.linesRefused, backend: 1] + counters[.linesDroppedSendError, backend: 1] == UInt64(toDead))
        #expect(counters[.linesDroppedRefused] + counters[.linesDroppedSendError] == UInt64(toDead))
        #expect(counters[.linesUnconfirmedAtExit] == 0)
    }

    /// A worker that takes a large backlog at once sends hundreds of packets to one backend in
    /// a turn; a refusing backend's error queue must not overflow between two reads of it (an
    /// ICMP error the kernel drops leaves its refused packet counted as sent).
    @Test("a burst to a refusing backend (2 000 packets queued while the relay is stopped): no line counted as sent, each refused or failed", arguments: ioDrivers)
    func refusingBackendBurst(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let deadPort = try unusedPort()
        let backend = "127.0.0.1:\(deadPort)"
        let relay = try RelayProcess(driver: driver, [
            "--bind", "127.0.0.1", "--port", "0", "--threads", "1", "--rcvbuf", "64M", backend,
        ])
        let address = try relay.listenAddress()
        try #require(relay.suspend(), "the relay did not stop")
        // Datagrams of 48 lines, about 1 350 bytes: one packet each at the default --packet-len.
        let datagrams = (0..<2_000).map { index in
            (0..<48).map { "burst.metric.\(index).\($0):\($0)|c" }.joined(separator: "\n")
        }
        let lines = UInt64(datagrams.count * 48)
        try send(datagrams, to: address)
        relay.signal(SIGCONT)
        let forwarded = poll(seconds: 20) { (relay.liveReport()?["statsrelay.lines_forwarded"] ?? 0) >= lines }
        #expect(forwarded, "not every line was forwarded: \(relay.standardError.suffix(800))")
        relay.signal(SIGTERM)
        #expect(relay.waitForExit() == 0)
        #expect(relay.counter("statsrelay.datagrams_received") == UInt64(datagrams.count))
        #expect(relay.counter("statsrelay.backend.lines_sent{backend=\"\(backend)\"}") == 0, "a delivery to a dead backend was claimed")
        let refused = relay.counter("statsrelay.backend.lines_dropped.refused{backend=\"\(backend)\"}") ?? 0
        let failed = relay.counter("statsrelay.backend.lines_dropped.send_error{backend=\"\(backend)\"}") ?? 0
        #expect(refused > 0)
        #expect(refused + failed == lines, "refused \(refused) + failed \(failed) of \(lines) lines")
    }

    @Test("a lone line at low traffic is flushed by the timer, without waiting for more lines", arguments: ioDrivers)
    func loneLineFlushed(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backends = [try TestBackend()]
        let relay = try InProcessRelay(backends: backends, driver: driver) { $0.flushIntervalNanoseconds = 20_000_000 }
        try send(["lonely:1|c"], to: relay.address)
        let received = try collect(from: backends, expectedLines: 1, seconds: 5)
        #expect(received.lines[0] == ["lonely:1|c"])
        _ = relay.stop()
    }

    @Test("without the kernel's minimum wait a worker still handles a lone datagram and its stop signal at once",
          arguments: ioDrivers, [UInt32(0), 100])
    func withoutMinimumWait(driver: IOBackendChoice, _ microseconds: UInt32) throws {
        try requireDriver(driver)
        let backends = [try TestBackend()]
        let relay = try InProcessRelay(backends: backends, driver: driver) {
            $0.minimumWaitMicroseconds = microseconds
            $0.flushIntervalNanoseconds = 1_000_000
        }
        try send(["alone:1|c"], to: relay.address)
        #expect(try collect(from: backends, expectedLines: 1, seconds: 5).lines[0] == ["alone:1|c"])
        let counters = relay.stop()
        #expect(counters[.linesForwarded] == 1)
    }

    @Test("IPv6: listening on ::1 and relaying to [::1] backends", .enabled(if: ipv6LoopbackAvailable, "no IPv6 loopback here"), arguments: ioDrivers)
    func ipv6(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backends = try (0..<2).map { _ in try TestBackend(host: "::1") }
        var configuration = RelayConfiguration(backends: [
            try BackendAddress(parsing: backends[0].spec), try BackendAddress(parsing: "\(backends[1].spec):b"),
        ])
        configuration.bindHost = "::1"
        configuration.port = 0
        configuration.threads = 1
        configuration.ioBackend = driver
        let relay = try Relay(configuration: configuration, logger: .init(label: "test"))
        let listen = try relay.start().listen
        #expect(relay.driver == driver)
        #expect(listen.description.hasPrefix("[::1]:"))
        let sent = (0..<200).map { "v6.metric.\($0):1|c" }
        let sender = try UDPSocket.bound(to: SocketAddress(numericHost: "::1", port: 0)!)
        for line in sent { try sender.send(Array(line.utf8), to: listen) }
        let received = try collect(from: backends, expectedLines: sent.count)
        for index in 0..<2 {
            #expect(received.lines[index].sorted() == sent.filter { expectedBackend(of: $0, backends: 2) == index }.sorted())
        }
        relay.stop()
        #expect(relay.wait().counters[.linesForwarded] == UInt64(sent.count))
    }

    @Test("two workers share the port and route identically: both workers' sockets take traffic, and every line reaches the backend its hash names", arguments: ioDrivers)
    func twoWorkers(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backends = try (0..<3).map { _ in try TestBackend() }
        // A child relay, so it can be stopped while the flows are spread: a worker's socket is
        // emptied only by that worker, so a socket holding datagrams proves its worker relays.
        let relay = try RelayProcess(driver: driver, ["--bind", "127.0.0.1", "--port", "0", "--rcvbuf", "16M"] + twoWorkerArguments + backends.map(\.spec))
        let address = try relay.listenAddress()
        try #require(relay.suspend(), "the relay did not stop")
        // Every flow carries the same 40 names, so each name passes through both workers.
        let (flows, queues) = try spreadOverWorkers(address) { flow in (0..<40).map { "w.metric.\($0):\(flow)|c" } }
        #expect(queues.count == 2 && queues.allSatisfy { $0 > 0 }, "queued bytes per worker socket: \(queues)")
        relay.signal(SIGCONT)
        let lines = flows.flatMap { $0 }
        var expected: [[String]] = [[], [], []]
        for line in lines { expected[expectedBackend(of: line, backends: 3)].append(line) }
        let received = try collect(from: backends, expectedLines: lines.count)
        relay.signal(SIGTERM)
        #expect(relay.waitForExit() == 0)
        for backend in 0..<3 { #expect(received.lines[backend].sorted() == expected[backend].sorted(), "backend \(backend)") }
        #expect(relay.counter("statsrelay.lines_forwarded") == UInt64(lines.count))
        #expect(relay.standardError.contains("threads=2"))
    }
}
