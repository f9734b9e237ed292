import Foundation
import Logging
@testable import RelayKernel
import Synchronization
import Testing
@testable import UringRelay

/// Keeps every log message with its level.
private final class LevelLog: Sendable {
    let lines = Mutex<[String]>([])

    struct Handler: LogHandler {
        let log: LevelLog
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace
        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }
        func log(event: LogEvent) { log.lines.withLock { $0.append("\(event.level) \(event.message)") } }
    }

    /// The lines that name the io driver.
    var driverLines: [String] { lines.withLock { $0.filter { $0.contains("io_backend=") } } }
}

/// Starts a relay on one loopback backend with `choice` and `probe`, and returns it and its log.
private func startRelay(choice: IOBackendChoice, probe: Relay.UringProbe? = nil) throws -> (Relay, LevelLog) {
    let backend = try TestBackend()
    var configuration = RelayConfiguration(backends: [try BackendAddress(parsing: backend.spec)])
    configuration.bindHost = "127.0.0.1"
    configuration.port = 0
    configuration.threads = 1
    configuration.ioBackend = choice
    let log = LevelLog()
    let logger = Logger(label: "test") { _ in LevelLog.Handler(log: log) }
    let relay = try probe.map { try Relay(configuration: configuration, logger: logger, uringProbe: $0) }
        ?? Relay(configuration: configuration, logger: logger)
    _ = try relay.start()
    return (relay, log)
}

@Suite("The io driver in the log: a choice at info, a fallback as a warning", .serialized, .timeLimit(.minutes(1)), .onOwnThread)
struct IOBackendLogTests {
    @Test("--io-backend given explicitly is logged once at info, never as a warning", arguments: ioDrivers)
    func explicitChoiceIsInfo(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let (relay, log) = try startRelay(choice: driver)
        relay.stop()
        #expect(relay.wait().failures.isEmpty)
        #expect(relay.driver == driver)
        let expected = driver == .portable
            ? "info io_backend=portable reason=\"chosen with --io-backend portable\"" : "info io_backend=uring"
        #expect(log.driverLines == [expected])
    }

    /// Under `auto`, io_uring where it runs is logged at info; where the probe fails the
    /// portable driver runs, and that fallback is the one warning.
    @Test("--io-backend auto logs io_uring at info and a fallback to portable as a warning", arguments: ioDrivers)
    func autoFallbackIsWarning(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let failure = UringProbeFailure(operation: "io_uring_setup", errno: .notPermitted)
        let failingProbe: Relay.UringProbe = { _ in failure }
        let (relay, log) = try startRelay(choice: .auto, probe: driver == .portable ? failingProbe : nil)
        relay.stop()
        #expect(relay.wait().failures.isEmpty)
        #expect(relay.driver == driver)
        let lines = log.driverLines
        #expect(lines.count == 1, "\(lines)")
        if driver == .portable {
            #expect(lines.first?.hasPrefix("warning io_backend=portable reason=\"io_uring_setup: Operation not permitted") == true, "\(lines)")
        } else {
            #expect(lines == ["info io_backend=uring"])
        }
    }
}
