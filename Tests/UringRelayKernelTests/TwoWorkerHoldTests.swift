@testable import RelayKernel
import Foundation
import Glibc
import Testing
@testable import UringRelay

/// `hold` with more than one worker: each worker holds what it received for a down backend
/// within the relay-wide budget, and replays it when the backend returns (docs/operations.md,
/// "Holding").
@Suite("Hold and replay with two workers", .serialized, .timeLimit(.minutes(1)), .onOwnThread)
struct TwoWorkerHoldTests {
    @Test("both workers hold a down backend's lines and replay them when it is back: every line once, each client's in order",
          arguments: ioDrivers)
    func holdAndReplayWithTwoWorkers(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let (backends, twins) = try backendsWithHealthTwins(3)
        let relay = try RelayProcess(driver: driver, [
            "--bind", "127.0.0.1", "--port", "0", "--rcvbuf", "16M", "--health-check", "tcp", "--health-interval", "100ms",
            "--health-timeout", "100ms", "--health-rise", "2", "--health-fall", "2", "--on-backend-down", "hold",
        ] + twoWorkerArguments + backends.map(\.spec))
        let address = try relay.listenAddress()
        func key(_ name: String) -> String { "statsrelay.backend.\(name){backend=\"\(backends[0].spec)\"}" }

        twins[0].close()
        #expect(relay.waitForLog("] backend down", seconds: 10), "\(relay.standardError)")
        // The log says what the monitor decided; the workers route by it once each has applied
        // the publication (one each: every backend was up until now).
        let applied = poll(seconds: 5) { (relay.liveReport()?["statsrelay.routing_updates"] ?? 0) >= 2 }
        #expect(applied, "the workers did not apply the backend's fall: \(lastReport(in: relay.standardError)["statsrelay.routing_updates"] ?? 0)")
        // Stopped while the clients send, so each worker's socket is seen to take some of them.
        try #require(relay.suspend(), "the relay did not stop")
        let (flows, queues) = try spreadOverWorkers(address) { flow in (0..<30).map { "hold.two.\(flow).\($0):\($0)|c" } }
        #expect(queues.count == 2 && queues.allSatisfy { $0 > 0 }, "queued bytes per worker socket: \(queues)")
        relay.signal(SIGCONT)
        let lines = flows.flatMap { $0 }
        let toDown = lines.filter { expectedBackend(of: $0, backends: 3) == 0 }
        try #require(flows.allSatisfy { flow in flow.contains { expectedBackend(of: $0, backends: 3) == 0 } },
                     "every client has lines for the down backend")
        let live = try collect(from: Array(backends[1...]), expectedLines: lines.count - toDown.count)
        #expect(live.lines.flatMap { $0 }.sorted() == lines.filter { expectedBackend(of: $0, backends: 3) != 0 }.sorted())
        // Every line for the down backend is held, whichever worker received it.
        let held = poll(seconds: 5) { relay.liveReport()?[key("lines_held")] == UInt64(toDown.count) }
        #expect(held, "lines_held never reached \(toDown.count): \(lastReport(in: relay.standardError)[key("lines_held")] ?? 0)")
        #expect(try collect(from: [backends[0]], expectedLines: 0, seconds: 0.1).totalLines == 0, "a held backend received lines while down")

        try twins[0].reopen()
        #expect(relay.waitForLog("] backend up", seconds: 10), "\(relay.standardError)")
        let replayed = try collect(from: [backends[0]], expectedLines: toDown.count)
        #expect(replayed.lines[0].sorted() == toDown.sorted(), "every held line arrives once")
        // A client's datagrams all reach one worker, which replays its held packets oldest first.
        for flow in flows {
            let mine = Set(flow)
            #expect(replayed.lines[0].filter(mine.contains) == flow.filter { expectedBackend(of: $0, backends: 3) == 0 })
        }
        relay.signal(SIGTERM)
        #expect(relay.waitForExit() == 0)
        let report = lastReport(in: relay.standardError)
        #expect(report[key("lines_held")] == UInt64(toDown.count))
        #expect(report[key("lines_replayed")] == UInt64(toDown.count))
        #expect(report["statsrelay.lines_dropped.held_at_exit"] == 0)
        #expect(report["statsrelay.lines_dropped.hold_overflow"] == 0)
    }
}
