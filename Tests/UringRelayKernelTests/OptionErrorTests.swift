import Foundation
import Testing
@testable import UringRelay

/// The command line refuses a bad number, duration or size with exit status 64 and a message
/// naming the option, the value as written and the limit. (No relay starts: nothing here runs a
/// driver.)
@Suite("Option errors name the option and its limit", .timeLimit(.minutes(1)), .onOwnThread)
struct OptionErrorTests {
    /// Negative numbers: argument-parser reads `-5` as a flag unless the option takes its value
    /// unconditionally; `--port=-1` always worked, `--port -1` said "Missing value".
    @Test("a negative number is read as the option's value and refused with its range, exit 64", arguments: [
        (["--port", "-1"], "invalid --port '-1': must be 0-65535"),
        (["-port", "-1"], "invalid --port '-1': must be 0-65535"),
        (["--packet-len", "-5"], "invalid --packet-len '-5': must be 2-65507 bytes"),
        (["-packetlen", "-5"], "invalid --packet-len '-5': must be 2-65507 bytes"),
        (["--threads", "-2"], "invalid --threads '-2': must be 1-256"),
        (["--max-datagram", "-3"], "invalid --max-datagram '-3': must be 1-65535 bytes"),
        (["--receive-buffers", "-4"], "invalid --receive-buffers '-4': must be a power of two from 1 to 32768"),
        (["--health-check-port", "-5"], "invalid --health-check-port '-5': must be 1-65535"),
        (["--health-rise", "-1"], "invalid --health-rise '-1': must be 1-100"),
        (["--health-fall", "-1"], "invalid --health-fall '-1': must be 1-100"),
        (["--hold-bytes", "-1"], "invalid --hold-bytes '-1': must be from 0 to 2G bytes"),
        (["-bufsize", "-8M"], "invalid --rcvbuf '-8M': must be between 4K and 2147483647 bytes"),
        (["--flush-interval", "-1s"], "invalid --flush-interval '-1s': must be between 100us and 60s"),
    ])
    func negativeNumbers(_ arguments: [String], _ message: String) throws {
        let result = try RelayProcess.run(arguments + ["127.0.0.1:9"])
        #expect(result.status == 64)
        #expect(result.error.contains(message), "stderr: \(result.error)")
        #expect(!result.error.contains("Missing value"), "stderr: \(result.error)")
    }

    @Test("a duration or size past its limit names the limit, with the value as written, exit 64", arguments: [
        (["--flush-interval", "1h"], "invalid --flush-interval '1h': must be between 100us and 60s"),
        (["--flush-interval", "2m"], "invalid --flush-interval '2m': must be between 100us and 60s"),
        (["--shutdown-timeout", "1h"], "invalid --shutdown-timeout '1h': must be between 10ms and 60s"),
        (["--min-wait", "20ms"], "invalid --min-wait '20ms': must be from 0 to 10ms"),
        (["--health-interval", "2h"], "invalid --health-interval '2h': must be between 10ms and 1h"),
        (["--health-timeout", "2s"], "invalid --health-timeout '2s': must be between 1ms and --health-interval (1s)"),
        (["--dns-refresh", "25h"], "invalid --dns-refresh '25h': must be between 100ms and 24h"),
        (["--rcvbuf", "3G"], "invalid --rcvbuf '3G': must be between 4K and 2147483647 bytes"),
        (["--hold-bytes", "3G"], "invalid --hold-bytes '3G': must be from 0 to 2G bytes"),
        (["--replay-rate", "2G"], "invalid --replay-rate '2G': must be between 1K and 1G bytes"),
        (["--flush-interval", "1d"], "invalid --flush-interval '1d': expected a duration such as 10ms, 1s or 500us (units: ns, us, ms, s, m, h)"),
    ])
    func pastTheLimit(_ arguments: [String], _ message: String) throws {
        let result = try RelayProcess.run(arguments + ["127.0.0.1:9"])
        #expect(result.status == 64)
        #expect(result.error.contains(message), "stderr: \(result.error)")
    }
}
