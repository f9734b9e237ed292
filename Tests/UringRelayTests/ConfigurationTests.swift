@testable import RelayKernel
import Testing
@testable import UringRelay

@Suite("Configuration parsing and validation")
struct ConfigurationTests {
    @Test(arguments: [
        ("127.0.0.1:8125", "127.0.0.1", UInt16(8125), nil as String?),
        ("10.0.0.1:8126:a", "10.0.0.1", 8126, "a"),
        ("statsd-1.example:8125:blue", "statsd-1.example", 8125, "blue"),
        ("[::1]:8125", "::1", 8125, nil),
        ("[2001:db8::5]:9000:x", "2001:db8::5", 9000, "x"),
        ("localhost:1", "localhost", 1, nil),
    ])
    func backendParses(_ text: String, _ host: String, _ port: UInt16, _ instance: String?) throws {
        let backend = try BackendAddress(parsing: text)
        #expect(backend.host == host)
        #expect(backend.port == port)
        #expect(backend.instance == instance)
        #expect(backend.description == text)
    }

    @Test(arguments: [
        ("127.0.0.1", "expected HOST:PORT[:INSTANCE]"),
        ("127.0.0.1:", "missing port"),
        (":8125", "empty host"),
        ("127.0.0.1:0", "port must be 1-65535"),
        ("127.0.0.1:65536", "port must be 1-65535"),
        ("127.0.0.1:http", "port must be 1-65535"),
        ("::1:8125", "too many ':' (write IPv6 addresses as [ADDRESS]:PORT)"),
        ("[::1]8125", "expected ':PORT' after ']'"),
        ("[::1:8125", "missing ']' after IPv6 address"),
        ("[127.0.0.1]:8125", "'127.0.0.1' is not an IPv6 address"),
        ("127.0.0.1:8125:", "empty instance after ':'"),
    ])
    func backendRejected(_ text: String, _ reason: String) {
        #expect(throws: ConfigurationError(argument: "backend", value: text, reason: reason)) {
            try BackendAddress(parsing: text)
        }
    }

    @Test(arguments: [
        ("10ms", UInt64(10_000_000)), ("1s", 1_000_000_000), ("250us", 250_000), ("1.5s", 1_500_000_000),
        ("2m", 120_000_000_000), ("500ns", 500), ("0", 0),
    ])
    func durations(_ text: String, _ nanoseconds: UInt64) throws {
        #expect(try DurationParser.nanoseconds(text, argument: "--flush-interval") == nanoseconds)
    }

    @Test(arguments: ["10", "ms", "-1s", "1d", "fast", "", "00", "-0"])
    func badDurations(_ text: String) {
        #expect(throws: ConfigurationError.self) { try DurationParser.nanoseconds(text, argument: "--flush-interval") }
    }

    @Test(arguments: [("0-3,8", [0, 1, 2, 3, 8]), ("1", [1]), ("2,0-1,1", [0, 1, 2])])
    func cpuLists(_ text: String, _ cpus: [Int]) throws {
        #expect(try CPUList.parse(text) == cpus)
    }

    @Test(arguments: ["", "3-1", "a", "1,,2", "-1"])
    func badCPULists(_ text: String) {
        #expect(throws: ConfigurationError.self) { try CPUList.parse(text) }
    }

    @Test(arguments: [("8388608", 8_388_608), ("512K", 524_288), ("8M", 8_388_608), ("1GiB", 1 << 30)])
    func byteSizes(_ text: String, _ bytes: Int) throws {
        #expect(try ByteSizeParser.bytes(text, argument: "--rcvbuf") == bytes)
    }

    @Test("validation names the bad setting")
    func validation() throws {
        let backend = try BackendAddress(parsing: "127.0.0.1:9001")
        var config = RelayConfiguration(backends: [backend])
        try config.validate()
        let cases: [(inout RelayConfiguration) -> Void] = [
            { $0.backends = [] }, { $0.bindHost = "nowhere" }, { $0.packetBytes = 1 },
            { $0.maxDatagramBytes = 70_000 }, { $0.flushIntervalNanoseconds = 0 }, { $0.threads = 0 },
            { $0.threads = 2; $0.cpus = [0] },
        ]
        let arguments = ["backends", "--bind", "--packet-len", "--max-datagram", "--flush-interval", "--threads", "--cpus"]
        for (change, argument) in zip(cases, arguments) {
            config = RelayConfiguration(backends: [backend])
            change(&config)
            let error = #expect(throws: ConfigurationError.self) { try config.validate() }
            #expect(error?.argument == argument)
        }
    }

    @Test("an admin endpoint on a TCP listener's port (the same address, or one a wildcard covers) is refused, naming both; another port or a UDP listener's is not",
          arguments: [
              ("127.0.0.1:9127", "0.0.0.0", true), ("0.0.0.0:9127", "127.0.0.1", true), ("127.0.0.1:9127", "127.0.0.1", true),
              ("127.0.0.2:9127", "127.0.0.1", false), ("127.0.0.1:9128", "0.0.0.0", false),
          ])
    func adminOnTCPListener(admin: String, bind: String, refused: Bool) throws {
        var config = RelayConfiguration(backends: [try BackendAddress(parsing: "127.0.0.1:9001")])
        config.bindHost = bind
        config.port = 9127  // a UDP listener on the admin's port is no conflict
        config.tcpPort = 9127
        config.admin = admin
        let result = Result { () throws(ConfigurationError) in try config.validate() }
        switch result {
        case .success:
            #expect(!refused)
        case .failure(let error):
            #expect(refused, "\(error)")
            #expect(error.argument == "--admin")
            #expect(error.reason == "the port of this relay's TCP listener tcp:\(bind):9127: give the admin endpoint a port of its own")
        }
    }

    /// Backend lists naming one host and port twice, and the error expected: the later entry,
    /// and the earlier one it repeats (1-based), whatever the instance labels.
    @Test("a host and port listed twice is refused, naming both entries", arguments: [
        (["10.0.0.1:8125", "10.0.0.2:8125", "10.0.0.1:8125"], "10.0.0.1:8125", 1),
        (["10.0.0.1:8125:a", "10.0.0.1:8125:b"], "10.0.0.1:8125:b", 1),
        (["[::1]:8125", "10.0.0.1:8125", "[0:0::1]:8125"], "[0:0::1]:8125", 1),
        (["statsd.example:8125", "other:8125", "STATSD.example:8125:x"], "STATSD.example:8125:x", 1),
        (["a:1", "b:1", "c:1", "b:1:again"], "b:1:again", 2),
    ])
    func duplicateBackends(_ specs: [String], _ duplicate: String, _ first: Int) throws {
        let backends = try specs.map { try BackendAddress(parsing: $0) }
        let error = #expect(throws: ConfigurationError.self) { try RelayConfiguration(backends: backends).validate() }
        #expect(error?.argument == "backend")
        #expect(error?.value == "\(try BackendAddress(parsing: duplicate))")
        #expect(error?.reason == "same host and port as backend \(first) ('\(backends[first - 1])'): give each backend once")
    }

    @Test("the same host on other ports, or other hosts on one port, are distinct backends", arguments: [
        ["10.0.0.1:8125", "10.0.0.1:8126"],
        ["10.0.0.1:8125", "10.0.0.2:8125", "[::1]:8125", "[::2]:8125", "statsd:8125"],
    ])
    func distinctBackends(_ specs: [String]) throws {
        try RelayConfiguration(backends: specs.map { try BackendAddress(parsing: $0) }).validate()
    }
}
