@testable import RelayKernel
import Testing
@testable import UringRelay

/// `listeners:` with several entries: each becomes a listener in order, the first the
/// `--bind`/`--port` one; one address twice is refused; the effective configuration lists them all.
@Suite("Listener configuration")
struct ListenerConfigTests {
    static func resolved(_ yaml: String, flags: ConfigFile = ConfigFile()) throws -> RelayConfiguration {
        try ConfigFile.resolve(file: try ConfigFile.parse(yaml, source: "test.yaml"), flags: flags, allowedCPUs: [0, 1])
    }

    /// Records an issue unless resolving `yaml` fails with a `ConfigFileError` at `keyPath` whose
    /// reason contains `reason`.
    static func expectRefused(
        _ yaml: String, keyPath: String, reason: String, sourceLocation: SourceLocation = #_sourceLocation
    ) {
        do {
            _ = try resolved(yaml)
            Issue.record("accepted: \(yaml)", sourceLocation: sourceLocation)
        } catch let error as ConfigFileError {
            #expect(error.keyPath == keyPath, "\(error)", sourceLocation: sourceLocation)
            #expect(error.reason.contains(reason), "\(error)", sourceLocation: sourceLocation)
        } catch {
            Issue.record("not a ConfigFileError: \(error)", sourceLocation: sourceLocation)
        }
    }

    @Test("three listeners in both forms, in order")
    func several() throws {
        let configuration = try Self.resolved(
            "listeners:\n  - 127.0.0.1:9125\n  - bind: \"::1\"\n    port: 9126\n  - \"[::]:9127\"\nbackends: [127.0.0.1:9001]")
        #expect(configuration.bindHost == "127.0.0.1")
        #expect(configuration.port == 9125)
        #expect(configuration.listenAddresses.map(\.description) == ["127.0.0.1:9125", "[::1]:9126", "[::]:9127"])
        // The effective configuration (`check-config`) lists them all, and reads back the same.
        let rendered = ConfigFile.render(configuration)
        #expect(try Self.resolved(rendered).listenAddresses == configuration.listenAddresses, "\(rendered)")
    }

    @Test("--port overrides the first listener only")
    func flagOverridesFirst() throws {
        var flags = ConfigFile()
        flags.port = 9000
        let configuration = try Self.resolved("listeners: [127.0.0.1:9125, 127.0.0.1:9126]\nbackends: [127.0.0.1:9001]", flags: flags)
        #expect(configuration.listenAddresses.map(\.description) == ["127.0.0.1:9000", "127.0.0.1:9126"])
    }

    @Test("one address twice is refused, naming both entries")
    func duplicate() throws {
        var configuration = RelayConfiguration(backends: [try BackendAddress(parsing: "127.0.0.1:9001")])
        configuration.bindHost = "127.0.0.1"
        configuration.port = 9125
        configuration.additionalListeners = [SocketAddress(numericHost: "::ffff:127.0.0.1", port: 9125)!]
        #expect(throws: ConfigurationError(argument: "listeners[1]", value: "[::ffff:127.0.0.1]:9125", reason: "same address as listeners[0]: give each listener once")) {
            try configuration.validate()
        }
    }
}

/// `--listen ADDR:PORT`, repeatable: the command line's form of `listeners`.
@Suite("Listener flags")
struct ListenerFlagTests {
    static func flags(_ listen: [String]) -> ConfigFile {
        var flags = ConfigFile()
        flags.listeners = listen.map { ConfigFile.Listener(text: $0) }
        return flags
    }

    @Test("--listen given twice replaces the file's listeners, bind and port included")
    func replacesFile() throws {
        let configuration = try ListenerConfigTests.resolved(
            "bind: 127.0.0.2\nport: 9000\nbackends: [127.0.0.1:9001]", flags: Self.flags(["127.0.0.1:9125", "[::1]:9126"]))
        #expect(configuration.listenAddresses.map(\.description) == ["127.0.0.1:9125", "[::1]:9126"])
    }

    @Test("a bad --listen is named as the flag")
    func badFlag() {
        #expect(throws: ConfigurationError(argument: "--listen", value: "localhost:9125", reason: "'localhost' is not an IPv4 or IPv6 address")) {
            _ = try ListenerConfigTests.resolved("backends: [127.0.0.1:9001]", flags: Self.flags(["localhost:9125"]))
        }
    }
}
