import Testing
@testable import UringRelay

@Suite("Hold configuration")
struct HoldConfigurationTests {
    /// `--hold-bytes` (the relay-wide total) and `--replay-rate` (bytes per second, relay-wide):
    /// accepted and refused values, with the argument named in the error.
    @Test("--hold-bytes and --replay-rate are validated and named when wrong", arguments: [
        (0, 1 << 20, nil), (64 << 20, 1 << 20, nil), (2 << 30, 1 << 30, nil), (4_096, 1_024, nil),
        (-1, 1 << 20, "--hold-bytes"), ((2 << 30) + 1, 1 << 20, "--hold-bytes"),
        (64 << 20, 1_023, "--replay-rate"), (64 << 20, 0, "--replay-rate"), (64 << 20, (1 << 30) + 1, "--replay-rate"),
    ] as [(Int, Int, String?)])
    func validation(holdBytes: Int, replayRate: Int, refused: String?) throws {
        var config = RelayConfiguration(backends: [try BackendAddress(parsing: "127.0.0.1:9001")])
        config.holdBytes = holdBytes
        config.replayBytesPerSecond = replayRate
        if let refused {
            let error = #expect(throws: ConfigurationError.self) { try config.validate() }
            #expect(error?.argument == refused)
        } else {
            #expect(throws: Never.self) { try config.validate() }
        }
    }

    @Test("the defaults: 64 MiB held for the whole relay, replayed at 1 MiB/s")
    func defaults() throws {
        let config = RelayConfiguration(backends: [try BackendAddress(parsing: "127.0.0.1:9001")])
        #expect(config.holdBytes == 64 << 20)
        #expect(config.replayBytesPerSecond == 1 << 20)
        #expect(try ByteSizeParser.bytes("1M", argument: "--replay-rate") == config.replayBytesPerSecond)
    }
}
