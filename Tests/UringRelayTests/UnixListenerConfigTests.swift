@testable import RelayKernel
import Testing
@testable import UringRelay

/// Unix datagram listeners in the configuration: `{unix: PATH, mode}` and `"unix:PATH"` among the
/// file's `listeners`, `--unix-socket` with `--unix-socket-mode` on the command line; each kind's
/// mistakes refused with the key path.
@Suite("Unix listener configuration")
struct UnixListenerConfigTests {
    static let backends = "backends: [127.0.0.1:9001]"

    @Test("both file forms, in order after the UDP listener, with their modes (0660 unless given); the rendered file reads back the same")
    func fileForms() throws {
        let configuration = try ListenerConfigTests.resolved(
            "listeners:\n  - 127.0.0.1:9125\n  - unix: /run/a.sock\n    mode: \"0640\"\n  - unix:/run/b.sock\n\(Self.backends)")
        #expect(configuration.listenAddresses.map(\.description) == ["127.0.0.1:9125", "unix:/run/a.sock", "unix:/run/b.sock"])
        #expect(configuration.listenAddresses[1].unixPath == "/run/a.sock")
        #expect(configuration.unixSocketMode(for: "/run/a.sock") == 0o640)
        #expect(configuration.unixSocketMode(for: "/run/b.sock") == 0o660)
        let rendered = ConfigFile.render(configuration)
        let again = try ListenerConfigTests.resolved(rendered)
        #expect(again.listenAddresses == configuration.listenAddresses, "\(rendered)")
        #expect(again.unixSocketModes == ["/run/a.sock": 0o640, "/run/b.sock": 0o660], "\(rendered)")
    }

    @Test("--unix-socket adds to the file's listeners (it replaces none), with --unix-socket-mode")
    func flagAdds() throws {
        var flags = ConfigFile()
        flags.unixSockets = [ConfigFile.Listener(unix: "/run/flag.sock", mode: "600")]
        let configuration = try ListenerConfigTests.resolved("listeners: [127.0.0.1:9125, 127.0.0.1:9126]\n\(Self.backends)", flags: flags)
        #expect(configuration.listenAddresses.map(\.description) == ["127.0.0.1:9125", "127.0.0.1:9126", "unix:/run/flag.sock"])
        #expect(configuration.unixSocketMode(for: "/run/flag.sock") == 0o600)
    }

    @Test(
        "mistakes are refused with the key path and the reason",
        arguments: [
            ("listeners: [unix:/run/x.sock]", "listeners[0]", "the first listener is UDP"),
            ("listeners:\n  - 127.0.0.1:9125\n  - unix: /run/x.sock\n    mode: \"0999\"", "listeners[1].mode", "octal"),
            ("listeners:\n  - 127.0.0.1:9125\n  - unix: /run/x.sock\n    port: 9", "listeners[1]", "no bind or port"),
            ("listeners:\n  - 127.0.0.1:9125\n  - bind: 127.0.0.1\n    mode: \"0600\"", "listeners[1].mode", "applies to a Unix listener"),
            ("listeners:\n  - 127.0.0.1:9125\n  - unix: \"@abstract\"", "listeners[1].unix", "file system path"),
            ("listeners: [127.0.0.1:9125, unix:/run/x.sock, unix:/run/x.sock]", "listeners[2]", "same path as listeners[1]"),
        ])
    func refused(yaml: String, keyPath: String, reason: String) {
        ListenerConfigTests.expectRefused(yaml + "\n" + Self.backends, keyPath: keyPath, reason: reason)
    }

    @Test("octal modes", arguments: [("660", UInt32?(0o660)), ("0660", 0o660), ("0o600", 0o600), ("0", 0), ("777", 0o777), ("1777", nil), ("8", nil), ("", nil), ("rw", nil)])
    func modes(text: String, mode: UInt32?) {
        #expect(ConfigFile.parseMode(text) == mode)
    }

    @Test("a Unix address keeps its path and has no port or host bytes", arguments: ["/run/statsrelay.sock", "relative.sock", "/" + String(repeating: "p", count: 106)])
    func address(path: String) throws {
        let address = try #require(SocketAddress(unixPath: path))
        #expect(address.family == .unix)
        #expect(address.unixPath == path)
        #expect(address.port == 0)
        #expect(!address.isUnspecified && !address.isLoopback && !address.isMulticast)
        #expect(address.description == "unix:\(path)")
        #expect(WorkerSetup.label(address) == "unixgram:\(path)")
        #expect(address != SocketAddress(unixPath: path + "x"))
    }

    @Test("paths a Unix listener cannot bind", arguments: ["", "@abstract", "/" + String(repeating: "p", count: 107), "a\u{0}b"])
    func badPath(path: String) {
        #expect(SocketAddress(unixPath: path) == nil)
    }
}
