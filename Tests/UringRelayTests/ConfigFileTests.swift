@testable import RelayKernel
import Logging
import Testing
@testable import UringRelay

/// The configuration file: what it reads into a configuration, what it refuses and with which
/// message, how the command line overrides it, how it is written back, and what a reload does
/// with each changed key. Pure logic: no file is opened here (`ConfigFile.parse` on text).
@Suite("Configuration file")
struct ConfigFileTests {
    /// The configuration a file gives, with no flag and two allowed CPUs.
    static func resolved(_ yaml: String, flags: ConfigFile = ConfigFile()) throws -> RelayConfiguration {
        try ConfigFile.resolve(file: try ConfigFile.parse(yaml, source: "test.yaml"), flags: flags, allowedCPUs: [0, 1])
    }

    /// The message a file is refused with.
    static func refusal(_ yaml: String, flags: ConfigFile = ConfigFile()) -> String? {
        do {
            _ = try resolved(yaml, flags: flags)
            return nil
        } catch {
            return "\(error)"
        }
    }

    /// Defaults with the given backends and two workers (two allowed CPUs).
    static func expected(_ backends: [BackendAddress], _ change: (inout RelayConfiguration) -> Void = { _ in }) -> RelayConfiguration {
        var configuration = RelayConfiguration(backends: backends)
        configuration.threads = 2
        change(&configuration)
        return configuration
    }

    static let one = [BackendAddress(host: "127.0.0.1", port: 9001)]

    @Test("a file with every key gives every setting, written as the flags take them")
    func everyKey() throws {
        let yaml = """
            listeners: ["127.0.0.1:9125"]
            backends:
              - 10.0.0.1:8125:a
              - address: 10.0.0.2:8125
                label: b
                health-check-port: 8136
              - address: "[2001:db8::5]:8125"
            packet-len: 512
            flush-interval: 250ms
            shutdown-timeout: 2s
            rcvbuf: 16M
            max-datagram: 4096
            receive-buffers: 256
            min-wait: 0
            threads: 3
            cpus: 0-2
            io-backend: portable
            reuseport-group: true
            health-check: statsd-admin
            health-check-port: 8126
            health-interval: 2s
            health-timeout: 300ms
            health-rise: 4
            health-fall: 5
            on-backend-down: hold
            hold-bytes: 128M
            replay-rate: 512K
            dns-refresh: 1m
            admin: 127.0.0.1:9127
            log-level: debug
            """
        let want = Self.expected([
            BackendAddress(host: "10.0.0.1", port: 8125, instance: "a"),
            BackendAddress(host: "10.0.0.2", port: 8125, instance: "b", healthCheckPort: 8136),
            BackendAddress(host: "2001:db8::5", port: 8125),
        ]) {
            $0.bindHost = "127.0.0.1"
            $0.port = 9125
            $0.packetBytes = 512
            $0.flushIntervalNanoseconds = 250_000_000
            $0.shutdownTimeoutNanoseconds = 2_000_000_000
            $0.receiveBufferBytes = 16 << 20
            $0.maxDatagramBytes = 4096
            $0.receiveBuffers = 256
            $0.minimumWaitMicroseconds = 0
            $0.threads = 3
            $0.cpus = [0, 1, 2]
            $0.ioBackend = .portable
            $0.reusePortGroup = true
            $0.healthCheck = .statsdAdmin
            $0.healthCheckPort = 8126
            $0.healthIntervalNanoseconds = 2_000_000_000
            $0.healthTimeoutNanoseconds = 300_000_000
            $0.healthRise = 4
            $0.healthFall = 5
            $0.onBackendDown = .hold
            $0.holdBytes = 128 << 20
            $0.replayBytesPerSecond = 512 << 10
            $0.dnsRefreshNanoseconds = 60_000_000_000
            $0.admin = "127.0.0.1:9127"
            $0.logLevel = .debug
        }
        #expect(try Self.resolved(yaml) == want)
    }

    @Test("short forms and shorthands", arguments: [
        ("bind: 127.0.0.2\nport: 9000\nbackends: [127.0.0.1:9001]", expected(one) { $0.bindHost = "127.0.0.2"; $0.port = 9000 }),
        ("listeners:\n  - bind: \"::1\"\n    port: 0\nbackends: [127.0.0.1:9001]", expected(one) { $0.bindHost = "::1"; $0.port = 0 }),
        ("listeners: [{port: 9000}]\nbackends: [127.0.0.1:9001]", expected(one) { $0.port = 9000 }),
        ("listeners: [\"[::]:9000\"]\nbackends: [127.0.0.1:9001]", expected(one) { $0.bindHost = "::"; $0.port = 9000 }),
        ("backends: [127.0.0.1:9001]\nrcvbuf: 8388608\nhold-bytes: 0", expected(one) { $0.holdBytes = 0 }),
        ("backends: [127.0.0.1:9001]\nreuseport-group: false\ncpus: ~", expected(one)),
        // Empty values are unset: the default holds.
        ("backends: [127.0.0.1:9001]\npacket-len:\nlog-level: ~", expected(one)),
        ("# only a comment\nbackends:\n  - 127.0.0.1:9001 # the one", expected(one)),
        ("cpus: '1'\nbackends: [127.0.0.1:9001]", expected(one) { $0.cpus = [1]; $0.threads = 1 }),
    ])
    func shortForms(_ yaml: String, _ want: RelayConfiguration) throws {
        #expect(try Self.resolved(yaml) == want)
    }

    @Test("refused with the file, the line, the key path, the value and the reason", arguments: [
        // Unknown keys, with the nearest known one when it is close.
        ("packet-length: 1400\nbackends: [127.0.0.1:9001]",
         "test.yaml:1: packet-length: unknown key (did you mean 'packet-len'?); the keys are the long options' names: see docs/configuration.md"),
        ("backends: [127.0.0.1:9001]\npacketlen: 1400",
         "test.yaml:2: packetlen: unknown key (did you mean 'packet-len'?); the keys are the long options' names: see docs/configuration.md"),
        ("backends: [127.0.0.1:9001]\nfrobnicate: 1",
         "test.yaml:2: frobnicate: unknown key; the keys are the long options' names: see docs/configuration.md"),
        ("backends:\n  - address: 127.0.0.1:9001\n    health-port: 8126",
         "test.yaml:3: backends[0].health-port: unknown key (did you mean 'health-check-port'?); an entry's keys are address, label, health-check-port"),
        ("listeners:\n  - adress: 127.0.0.1\nbackends: [127.0.0.1:9001]",
         "test.yaml:2: listeners[0].adress: unknown key; an entry's keys are bind, port, unix, mode, tcp"),
        ("port: 1\nbackends: [127.0.0.1:9001]\nport: 2", "test.yaml:3: port: given twice (first on line 1): give each key once"),
        // Wrong types.
        ("port: eighty\nbackends: [127.0.0.1:9001]", "test.yaml:1: port: invalid value 'eighty': expected an integer"),
        ("packet-len: 1400.5\nbackends: [127.0.0.1:9001]", "test.yaml:1: packet-len: invalid value '1400.5': expected an integer"),
        ("reuseport-group: maybe\nbackends: [127.0.0.1:9001]", "test.yaml:1: reuseport-group: invalid value 'maybe': expected true or false"),
        ("backends: 127.0.0.1:9001", "test.yaml:1: backends: invalid value '127.0.0.1:9001': expected a list"),
        ("flush-interval: [10ms]\nbackends: [127.0.0.1:9001]",
         "test.yaml:1: flush-interval: invalid value '[10ms]': expected a single value (text or a number)"),
        ("backends:\n  - 127.0.0.1:9001\n  - address: 127.0.0.1:9002\n    health-check-port: admin",
         "test.yaml:4: backends[1].health-check-port: invalid value 'admin': expected an integer"),
        ("backends:\n  - label: a", "test.yaml:2: backends[0]: missing key 'address': a backend written as a mapping needs its address"),
        ("backends:\n  - [127.0.0.1:9001]",
         "test.yaml:2: backends[0]: invalid value '[127.0.0.1:9001]': expected HOST:PORT[:INSTANCE] or a mapping of address, label and health-check-port"),
        ("backends:\n  - address: 127.0.0.1:9001\n    label: a:b", "test.yaml:3: backends[0].label: invalid value 'a:b': a label must not contain ':' or '='"),
        ("port: [8125]\nbackends: [127.0.0.1:9001]", "test.yaml:1: port: invalid value '[8125]': expected an integer"),
        ("- port: 1", "test.yaml:1: invalid value '[{port: 1}]': expected a mapping of keys to values (key: value), one key per option"),
        // Bad values.
        ("port: 70000\nbackends: [127.0.0.1:9001]", "test.yaml:1: port: invalid value '70000': must be 0-65535"),
        ("packet-len: 1\nbackends: [127.0.0.1:9001]", "test.yaml:1: packet-len: invalid value '1': must be 2-65507 bytes"),
        ("flush-interval: 1h\nbackends: [127.0.0.1:9001]", "test.yaml:1: flush-interval: invalid value '1h': must be between 100us and 60s"),
        ("backends: [127.0.0.1:9001]\nrcvbuf: 8Q", "test.yaml:2: rcvbuf: invalid value '8Q': expected a byte size such as 8388608, 512K or 8M"),
        ("on-backend-down: retry\nbackends: [127.0.0.1:9001]",
         "test.yaml:1: on-backend-down: invalid value 'retry': expected rehash, hold or drop"),
        ("health-check: http\nbackends: [127.0.0.1:9001]",
         "test.yaml:1: health-check: invalid value 'http': expected none, tcp or statsd-admin"),
        ("log-level: loud\nbackends: [127.0.0.1:9001]",
         "test.yaml:1: log-level: invalid value 'loud': expected trace, debug, info, notice, warning, error or critical"),
        ("admin: 127.0.0.1\nbackends: [127.0.0.1:9001]", "test.yaml:1: admin: invalid value '127.0.0.1': expected ADDR:PORT (e.g. 127.0.0.1:8127), [IPv6]:PORT or none"),
        ("bind: example.com\nbackends: [127.0.0.1:9001]", "test.yaml:1: bind: invalid value 'example.com': not an IPv4 or IPv6 address"),
        ("threads: 3\nbackends: [127.0.0.1:9001]",
         "test.yaml:1: threads: invalid value '3': this process may use 2 CPUs (0,1): give at most 2, or name the CPUs to pin workers to with --cpus"),
        ("health-interval: 100ms\nbackends: [127.0.0.1:9001]",
         "test.yaml: health-timeout: invalid value '500ms': must be between 1ms and health-interval (100ms) (health-timeout is at its default: set it too)"),
        ("backends:\n  - 127.0.0.1:9001\n  - 127.0.0.1:99999", "test.yaml:3: backends[1]: invalid value '127.0.0.1:99999': port must be 1-65535"),
        ("backends:\n  - address: 127.0.0.1:9001:a\n    label: b",
         "test.yaml:3: backends[0].label: invalid value 'b': the address already has an instance label ('127.0.0.1:9001:a'): give the label once"),
        ("backends:\n  - address: 127.0.0.1:9001\n    health-check-port: 0",
         "test.yaml:3: backends[0].health-check-port: invalid value '0': must be 1-65535"),
        ("packet-len: 1400", "test.yaml: backends: at least one backend HOST:PORT is required"),
        ("backends: []", "test.yaml:1: backends: at least one backend HOST:PORT is required"),
        // Two backends at one address, whatever the spelling and the instance label.
        ("backends:\n  - 127.0.0.1:9001:a\n  - \"[::ffff:127.0.0.1]:9001:b\"",
         "test.yaml:3: backends[1]: invalid value '[::ffff:127.0.0.1]:9001:b': same host and port as backend 1 ('127.0.0.1:9001:a'): give each backend once"),
        // Listeners.
        ("listeners: [\"127.0.0.1:9125\"]\nport: 9000\nbackends: [127.0.0.1:9001]",
         "test.yaml:1: listeners: give either listeners or bind and port (the one-listener shorthand), not both"),
        ("listeners: [\"localhost:9125\"]\nbackends: [127.0.0.1:9001]",
         "test.yaml:1: listeners[0]: invalid value 'localhost:9125': 'localhost' is not an IPv4 or IPv6 address"),
        // Not YAML.
        ("port: [1\nbackends: [127.0.0.1:9001]", "test.yaml:2: not valid YAML: did not find expected ',' or ']'"),
    ])
    func refused(_ yaml: String, _ message: String) {
        #expect(Self.refusal(yaml) == message)
    }

    @Test("an empty file sets nothing: only the backends are missing")
    func emptyFile() throws {
        let file = try ConfigFile.parse("", source: "empty.yaml")
        #expect(file.keysSet.isEmpty)
        var flags = ConfigFile()
        flags.backends = [.init(address: "127.0.0.1:9001")]
        #expect(try ConfigFile.resolve(file: file, flags: flags, allowedCPUs: [0, 1]) == Self.expected(Self.one))
    }

    @Test("a flag given overrides the file's key; a flag not given leaves it; positional backends replace the file's list")
    func flagsOverFile() throws {
        let yaml = """
            port: 9000
            packet-len: 1200
            flush-interval: 50ms
            threads: 1
            on-backend-down: hold
            backends: [127.0.0.1:9001, 127.0.0.1:9002]
            """
        var flags = ConfigFile()
        flags.packetLen = 512
        flags.onBackendDown = "drop"
        flags.reuseportGroup = true
        let merged = try Self.resolved(yaml, flags: flags)
        #expect(merged == Self.expected([BackendAddress(host: "127.0.0.1", port: 9001), BackendAddress(host: "127.0.0.1", port: 9002)]) {
            $0.port = 9000  // from the file
            $0.packetBytes = 512  // the flag
            $0.flushIntervalNanoseconds = 50_000_000  // the file
            $0.threads = 1  // the file
            $0.onBackendDown = .drop  // the flag
            $0.reusePortGroup = true  // the flag (the file leaves it)
        })

        flags = ConfigFile()
        flags.backends = [.init(address: "127.0.0.1:9003")]
        flags.threads = 2
        #expect(try Self.resolved(yaml, flags: flags).backends == [BackendAddress(host: "127.0.0.1", port: 9003)])
        #expect(try Self.resolved(yaml, flags: flags).threads == 2)
    }

    @Test("a bad flag is named as the flag, a bad key as the file's key, whichever source the other values came from", arguments: [
        // The flag's value is bad: named by the flag, as without a file.
        ("packet-len: 1400\nbackends: [127.0.0.1:9001]", flags { $0.packetLen = 1 },
         "invalid --packet-len '1': must be 2-65507 bytes"),
        ("backends: [127.0.0.1:9001]", flags { $0.flushInterval = "1h" },
         "invalid --flush-interval '1h': must be between 100us and 60s"),
        ("backends: [127.0.0.1:9001]", flags { $0.backends = [.init(address: "127.0.0.1")] },
         "invalid backend '127.0.0.1': expected HOST:PORT[:INSTANCE]"),
        ("backends: [127.0.0.1:9001]", flags { $0.threads = 3 },
         "invalid --threads '3': this process may use 2 CPUs (0,1): give at most 2, or name the CPUs to pin workers to with --cpus"),
        // A bad key the flag overrides is never looked at.
        ("packet-len: 1\nbackends: [127.0.0.1:9001]", flags { $0.packetLen = 1400 }, nil),
        ("flush-interval: 2m\nbackends: [127.0.0.1:9001]", flags { $0.flushInterval = "10ms" }, nil),
        ("backends: [127.0.0.1:99999]", flags { $0.backends = [.init(address: "127.0.0.1:9001")] }, nil),
        // A good flag leaves a bad key of another option bad.
        ("packet-len: 1\nbackends: [127.0.0.1:9001]", flags { $0.port = 9000 },
         "test.yaml:1: packet-len: invalid value '1': must be 2-65507 bytes"),
        // The file's health-interval against the flag's health-timeout: the flag is named.
        ("health-interval: 100ms\nbackends: [127.0.0.1:9001]", flags { $0.healthTimeout = "200ms" },
         "invalid --health-timeout '200ms': must be between 1ms and --health-interval (100ms)"),
    ] as [(String, ConfigFile, String?)])
    func namedBySource(_ yaml: String, _ flags: ConfigFile, _ message: String?) {
        #expect(Self.refusal(yaml, flags: flags) == message)
    }

    /// Command-line settings with `change` made.
    static func flags(_ change: (inout ConfigFile) -> Void) -> ConfigFile {
        var flags = ConfigFile()
        change(&flags)
        return flags
    }

    @Test("the nearest known key is suggested only when it is close", arguments: [
        ("packet-length", "packet-len"), ("packet_len", "packet-len"), ("PacketLen", "packet-len"), ("flush-intervall", "flush-interval"),
        ("helth-check", "health-check"), ("backend", "backends"), ("listen", "listeners"), ("bindd", "bind"), ("health-port", "health-check-port"), ("check-port", "health-check-port"), ("timeout", nil), ("x", nil),
    ] as [(String, String?)])
    func suggestion(_ unknown: String, _ suggested: String?) {
        #expect(ConfigFile.suggestion(for: unknown, among: ConfigFile.keys.map(\.name)) == suggested)
    }

    @Test("the printed configuration holds every key, and reads back as the same configuration")
    func renderRoundTrip() throws {
        var configuration = Self.expected([
            BackendAddress(host: "10.0.0.1", port: 8125, instance: "a"),
            BackendAddress(host: "10.0.0.2", port: 8125, instance: "b yes # not a comment", healthCheckPort: 8136),
            BackendAddress(host: "::1", port: 8125, healthCheckPort: 8126),
            BackendAddress(host: "statsd.example", port: 8125),
        ])
        configuration.bindHost = "::"
        configuration.port = 9125
        configuration.cpus = [0, 1, 2, 3, 8]
        configuration.threads = 5
        configuration.minimumWaitMicroseconds = 0
        configuration.healthCheckPort = 8126
        configuration.holdBytes = 1000
        configuration.logLevel = .warning
        configuration.flushIntervalNanoseconds = 1_500_000
        let text = ConfigFile.render(configuration, header: ["a header"])
        #expect(text.hasPrefix("# a header\n"))
        for key in ConfigFile.keys where key.name != "bind" && key.name != "port" {
            #expect(text.contains("\n\(key.name):"), "\(key.name) missing from:\n\(text)")
        }
        #expect(text.contains("\ncpus: 0-3,8  # reload: needs a restart\n"))
        #expect(text.contains("\non-backend-down: rehash  # reload: applied at SIGHUP\n"))
        let file = try ConfigFile.parse(text, source: "rendered")
        #expect(try ConfigFile.resolve(file: file, flags: ConfigFile(), allowedCPUs: [0, 1]) == configuration)
    }

    @Test("a reload applies listeners, backends, packet length, flush interval, down-policy, health checks, dns-refresh and log level, and keeps the others with the reason")
    func reloadPlan() throws {
        let running = Self.expected(Self.one)
        var candidate = running
        candidate.backends = [BackendAddress(host: "127.0.0.1", port: 9002), BackendAddress(host: "127.0.0.1", port: 9001)]
        candidate.onBackendDown = .drop
        candidate.healthCheck = .tcp
        candidate.healthRise = 5
        candidate.dnsRefreshNanoseconds = 5_000_000_000
        candidate.logLevel = .debug
        candidate.packetBytes = 512
        candidate.flushIntervalNanoseconds = 50_000_000
        candidate.shutdownTimeoutNanoseconds = 2_000_000_000
        candidate.threads = 1
        candidate.port = 9000
        let plan = ConfigFileReload(running: running, candidate: candidate, holdBytesInUse: 0)
        #expect(plan.applied.map(\.key) == [
            "listeners", "backends", "packet-len", "flush-interval", "health-check", "health-rise", "on-backend-down", "dns-refresh", "log-level",
        ])
        #expect(plan.kept.map(\.key) == ["shutdown-timeout", "threads"])
        #expect(plan.kept.first { $0.key == "shutdown-timeout" } == ConfigFileReload.Change(
            key: "shutdown-timeout", running: "900ms", file: "2s", applied: false,
            reason: "needs a restart: the workers take it only when they start; applied at next start"))
        #expect(plan.kept.first { $0.key == "threads" }?.reason == "needs a restart: fixed for the life of the process; applied at next start")
        var want = candidate
        want.shutdownTimeoutNanoseconds = running.shutdownTimeoutNanoseconds
        want.threads = 2
        #expect(plan.result == want)
        #expect(ConfigFileReload(running: running, candidate: running, holdBytesInUse: 0).changes.isEmpty)
    }

    @Test("a backend's health-check port alone is a change of backends")
    func healthPortIsABackendChange() {
        let running = Self.expected(Self.one)
        var candidate = running
        candidate.backends[0].healthCheckPort = 8126
        let plan = ConfigFileReload(running: running, candidate: candidate, holdBytesInUse: 0)
        #expect(plan.applied.map(\.key) == ["backends"])
        #expect(plan.result.backends[0].healthCheckPort == 8126)
    }

    @Test("leaving hold applies at once, packets held or not; with packets held, the change notes that they still drain",
          arguments: [DownPolicy.rehash, .drop])
    func leavingHold(to policy: DownPolicy) {
        var running = Self.expected(Self.one)
        running.onBackendDown = .hold
        var candidate = running
        candidate.onBackendDown = policy
        let held = ConfigFileReload(running: running, candidate: candidate, holdBytesInUse: 65_536)
        #expect(held.kept.isEmpty)
        #expect(held.applied.map(\.key) == ["on-backend-down"])
        #expect(held.result.onBackendDown == policy)
        let note = held.applied.first?.note ?? ""
        #expect(note.hasPrefix("65536 bytes held for down backends stay queued for them"), "\(note)")
        #expect(note.hasSuffix("New lines for a down backend follow \(policy.rawValue)"), "\(note)")
        let none = ConfigFileReload(running: running, candidate: candidate, holdBytesInUse: 0)
        #expect(none.result.onBackendDown == policy && none.applied.first?.note == nil)
        // Into hold: nothing to note.
        let into = ConfigFileReload(running: candidate, candidate: running, holdBytesInUse: 65_536)
        #expect(into.result.onBackendDown == .hold && into.applied.first?.note == nil)
    }

    @Test("every handler made with one level control follows it; a level set on one logger stays its own")
    func levelControl() {
        let control = RelayLogHandler.LevelControl(.info)
        var first = RelayLogHandler(label: "a", level: control)
        let second = RelayLogHandler(label: "b", level: control)
        #expect(first.logLevel == .info && second.logLevel == .info)
        control.level = .debug
        #expect(first.logLevel == .debug && second.logLevel == .debug)
        first.logLevel = .error
        control.level = .trace
        #expect(first.logLevel == .error)
        #expect(second.logLevel == .trace)
        for level in Logger.Level.allCases {
            control.level = level
            #expect(control.level == level)
        }
    }
}

/// `deploy/statsrelay.yaml`, the example the package installs as `/etc/statsrelay/statsrelay.yaml`.
@Suite("The example configuration file")
struct ExampleConfigFileTests {
    /// The example's text, from the package's `deploy/` directory.
    static func example() throws -> String {
        let root = #filePath.split(separator: "/", omittingEmptySubsequences: false).dropLast(3).joined(separator: "/")
        return String(decoding: try FileContents.read(path: root + "/deploy/statsrelay.yaml"), as: UTF8.self)
    }

    @Test("as shipped it sets nothing (every key commented out); uncommented it is valid and holds every key")
    func everyKeyCommented() throws {
        let text = try Self.example()
        #expect(try ConfigFile.parse(text, source: "statsrelay.yaml").keysSet.isEmpty)
        // A commented-out setting is `#key: value` or a list or mapping line `#  - …`; prose is `# …`.
        let uncommented = text.split(separator: "\n", omittingEmptySubsequences: false).map { line -> Substring in
            guard line.hasPrefix("#"), line.count > 1 else { return line }
            let next = line.dropFirst()
            return next.hasPrefix(" ") && !next.hasPrefix("  ") ? line : next
        }.joined(separator: "\n")
        let file = try ConfigFile.parse(uncommented, source: "statsrelay.yaml")
        let keys = Set(ConfigFile.keys.map(\.name)).subtracting(["bind", "port"])
        #expect(file.keysSet == keys)
        #expect(text.contains("\"bind: 0.0.0.0\"") && text.contains("\"port: 8125\""))
        let configuration = try ConfigFile.resolve(file: file, flags: ConfigFile(), allowedCPUs: [0, 1])
        // The values shown are the defaults, but for the examples of what has none.
        var defaults = RelayConfiguration(backends: configuration.backends)
        defaults.threads = 4
        defaults.cpus = [0, 1, 2, 3]
        defaults.healthCheckPort = 8126
        defaults.rewrite = try LineRewrite(prefix: "eu-west", tags: "dc:eu-west,relay")
        defaults.tcpPort = 8125
        #expect(configuration == defaults)
        #expect(configuration.backends.map(\.description) == ["10.0.0.1:8125:a", "10.0.0.2:8125:b", "10.0.0.3:8125:c"])
        #expect(configuration.backends[2].healthCheckPort == 8126)
    }
}

/// The configuration reload families of `/metrics`.
@Suite("Configuration reloads on /metrics")
struct ConfigReloadMetricsTests {
    @Test("reloads by result, whether the last one succeeded, and when the configuration in force was loaded")
    func families() {
        var snapshot = exampleSnapshot()
        snapshot.configReloadsSucceeded = 4
        snapshot.configReloadsFailed = 2
        snapshot.configLastReloadSuccessful = false
        snapshot.configLastReloadSuccessUnixSeconds = 1_700_000_123.5
        let text = PrometheusExposition.render(snapshot)
        #expect(text.contains("""
            # TYPE statsrelay_config_reloads_total counter
            statsrelay_config_reloads_total{result="success"} 4
            statsrelay_config_reloads_total{result="failure"} 2

            """))
        #expect(text.contains("# TYPE statsrelay_config_last_reload_successful gauge\nstatsrelay_config_last_reload_successful 0\n"))
        #expect(text.contains("statsrelay_config_last_reload_success_timestamp_seconds 1700000123.5\n"))
        // Before any reload: successful, loaded at the start.
        let fresh = PrometheusExposition.render(exampleSnapshot())
        #expect(fresh.contains("statsrelay_config_reloads_total{result=\"failure\"} 0\n"))
        #expect(fresh.contains("statsrelay_config_last_reload_successful 1\n"))
    }

    @Test("the counts follow the reloads recorded")
    func counts() {
        let counts = ConfigFileReloadCounts()
        #expect(counts.succeeded == 0 && counts.failed == 0 && !counts.lastReloadFailed && counts.lastSuccessUnixSeconds == nil)
        counts.recordFailure()
        #expect(counts.failed == 1 && counts.lastReloadFailed)
        counts.recordSuccess(at: 1_700_000_000.25)
        #expect(counts.succeeded == 1 && !counts.lastReloadFailed && counts.lastSuccessUnixSeconds == 1_700_000_000.25)
    }
}
