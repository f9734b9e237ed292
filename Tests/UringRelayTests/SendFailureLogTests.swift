import Dispatch
import Logging
import RelayKernel
import Synchronization
import Testing
@testable import UringRelay

/// Counters for backends `a:1` and `b:2` with the given failed sends (packets, lines; the third
/// value, sends retried after a pending refusal, is no failure and must not show).
private func counters(a: (UInt64, UInt64, UInt64) = (0, 0, 0), b: (UInt64, UInt64, UInt64) = (0, 0, 0)) -> RelayCounters {
    var counters = RelayCounters(backends: ["a:1", "b:2"])
    for (index, failed) in [a, b].enumerated() {
        counters[.sendErrors, backend: index] = failed.0
        counters[.linesDroppedSendError, backend: index] = failed.1
        counters[.sendRetries, backend: index] = failed.2
    }
    return counters
}

private let second: UInt64 = 1_000_000_000

/// Keeps every log message and signals each one.
private final class LogCapture: Sendable {
    let lines = Mutex<[String]>([])
    let logged = DispatchSemaphore(value: 0)

    var handler: some LogHandler { Handler(capture: self) }

    struct Handler: LogHandler {
        let capture: LogCapture
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace
        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }
        func log(event: LogEvent) {
            let details = (event.metadata ?? [:]).sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
            capture.lines.withLock { $0.append("\(event.level) \(event.message) \(details)") }
            capture.logged.signal()
        }
    }
}

@Suite("Failed sends reach the log: counted on the send path, logged off it, at most once per backend per 10 s")
struct SendFailureLogTests {
    @Test("nothing failed, nothing logged")
    func quietWhenClean() {
        var log = SendFailureLog()
        #expect(log.check(counters(), now: 5 * second).isEmpty)
    }

    @Test("the first failures of a backend are logged at once; more within 10 s wait, then come in one line with everything since")
    func rateLimited() {
        var log = SendFailureLog()
        #expect(log.check(counters(a: (1, 3, 0)), now: 100 * second)
            == [.init(backend: "a:1", packets: 1, lines: 3, sinceLast: nil)])
        #expect(log.check(counters(a: (5, 20, 2)), now: 101 * second).isEmpty)
        #expect(log.check(counters(a: (9, 40, 2)), now: 109 * second).isEmpty)
        #expect(log.check(counters(a: (9, 40, 2)), now: 110 * second)
            == [.init(backend: "a:1", packets: 8, lines: 37, sinceLast: 10 * second)])
        #expect(log.check(counters(a: (9, 40, 2)), now: 200 * second).isEmpty, "no new failure, no line")
        #expect(log.check(counters(a: (10, 41, 2)), now: 201 * second)
            == [.init(backend: "a:1", packets: 1, lines: 1, sinceLast: 91 * second)])
    }

    @Test("each backend has its own limit")
    func perBackend() {
        var log = SendFailureLog()
        #expect(log.check(counters(a: (1, 1, 0)), now: 100 * second).map(\.backend) == ["a:1"])
        #expect(log.check(counters(a: (2, 2, 0), b: (4, 4, 4)), now: 102 * second)
            == [.init(backend: "b:2", packets: 4, lines: 4, sinceLast: nil)])
    }

    @Test("the watch reads the counters on its own timer and logs at error")
    func watchLogs() throws {
        let capture = LogCapture()
        let watch = SendFailureWatch(
            logger: Logger(label: "test") { _ in capture.handler }, periodNanoseconds: 10_000_000, quietNanoseconds: 10 * second)
        watch.start { counters(b: (3, 12, 1)) }
        defer { watch.stop() }
        #expect(capture.logged.wait(timeout: .now() + 10) == .success, "no log line within 10 s")
        let line = try #require(capture.lines.withLock { $0.first })
        #expect(line.hasPrefix("error sends to a backend failed"), "\(line)")
        #expect(line.contains("backend=b:2") && line.contains("packets=3") && line.contains("lines=12"), "\(line)")
        #expect(line.contains("counter=statsrelay.backend.send_errors"), "\(line)")
    }
}
