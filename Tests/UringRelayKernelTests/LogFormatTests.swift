@testable import RelayKernel
import Foundation
import Glibc
import Testing
@testable import UringRelay

@Suite("Log format (--log-format)", .serialized, .timeLimit(.minutes(1)), .onOwnThread)
struct LogFormatTests {
    @Test("--log-format json: every log event on standard error is one JSON object with its metadata as keys", arguments: ioDrivers)
    func jsonLines(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let relay = try RelayProcess(driver: driver, [
            "--log-format", "json", "--bind", "127.0.0.1", "--port", "0", "--threads", "1", "--packet-len", "1234", backend.spec,
        ])
        #expect(relay.waitForLog("\"message\":\"listening on "))
        relay.signal(SIGTERM)
        #expect(relay.waitForExit(seconds: 15) == 0)
        // The exit report's counter lines are not log events: every other line is one.
        let lines = relay.standardError.split(separator: "\n").map(String.init)
        let events = lines.filter { !$0.hasPrefix("statsrelay.") }
        #expect(lines.count > events.count, "no exit report")
        #expect(events.count >= 3, "\(relay.standardError)")
        var objects: [[String: Any]] = []
        for event in events {
            let object = try JSONSerialization.jsonObject(with: Data(event.utf8)) as? [String: Any]
            #expect(object != nil, "not a JSON object: \(event)")
            if let object { objects.append(object) }
        }
        let listening = try #require(objects.first { ($0["message"] as? String)?.hasPrefix("listening on 127.0.0.1:") == true })
        #expect(listening["packet_len"] as? String == "1234")
        #expect(listening["level"] as? String == "info")
        #expect(listening["label"] as? String == "statsrelay")
        let stopping = try #require(objects.first { ($0["message"] as? String)?.hasPrefix("stopping") == true })
        #expect(stopping["signal"] as? String == "SIGTERM")
        #expect(objects.contains { $0["message"] as? String == "stopped" })
        #expect(relay.counter("statsrelay.lines_received") == 0)
    }
}
