import RelayKernel
import Testing
@testable import UringRelay

/// What `--mirror` is not built with yet is refused at start (exit 64 naming `--mirror`), never
/// run half-done: rewritten lines, and a mirror backend over TCP.
@Suite("Mirror combinations refused")
struct MirrorCombinationTests {
    func configuration(mirror: String, sendProtocol: BackendTransport = .udp, rewrite: LineRewrite = LineRewrite()) throws -> RelayConfiguration {
        var configuration = RelayConfiguration(backends: [try BackendAddress(parsing: "127.0.0.1:9001")])
        configuration.mirror = [try BackendAddress(parsing: mirror)]
        configuration.sendProtocol = sendProtocol
        configuration.rewrite = rewrite
        return configuration
    }

    @Test("a mirror with --metrics-prefix or --metrics-tags is refused naming --mirror")
    func rewriting() throws {
        for rewrite in [try LineRewrite(prefix: "eu", tags: ""), try LineRewrite(prefix: "", tags: "dc:eu")] {
            let error = #expect(throws: ConfigurationError.self) { try configuration(mirror: "127.0.0.1:9101", rewrite: rewrite).validate() }
            #expect(error?.argument == "--mirror")
            #expect(error?.reason.contains("--metrics-prefix or --metrics-tags") == true)
        }
    }

    @Test("a mirror backend over TCP (tcp://, or --sendproto TCP without a scheme) is refused naming it; udp:// under --sendproto TCP is taken")
    func tcpMirror() throws {
        for (mirror, transport) in [("tcp://127.0.0.1:9101", BackendTransport.udp), ("127.0.0.1:9101", .tcp)] {
            let error = #expect(throws: ConfigurationError.self) { try configuration(mirror: mirror, sendProtocol: transport).validate() }
            #expect(error?.argument == "--mirror")
            #expect(error?.value.contains("127.0.0.1:9101") == true)
        }
        try configuration(mirror: "udp://127.0.0.1:9101", sendProtocol: .tcp).validate()
        try configuration(mirror: "127.0.0.1:9101").validate()
    }
}
