import RelayKernel
import Testing
@testable import UringRelay

/// `--mirror` with a rewrite and with TCP mirror backends is taken (it was refused before it
/// was built): the kernel tests `MirrorRewriteKernelTests` and `MirrorTCPKernelTests` run them.
@Suite("Mirror combinations")
struct MirrorCombinationTests {
    func configuration(mirror: String, sendProtocol: BackendTransport = .udp, rewrite: LineRewrite = LineRewrite()) throws -> RelayConfiguration {
        var configuration = RelayConfiguration(backends: [try BackendAddress(parsing: "127.0.0.1:9001")])
        configuration.mirror = [try BackendAddress(parsing: mirror)]
        configuration.sendProtocol = sendProtocol
        configuration.rewrite = rewrite
        return configuration
    }

    @Test("a mirror with --metrics-prefix or --metrics-tags is taken")
    func rewriting() throws {
        for rewrite in [try LineRewrite(prefix: "eu", tags: ""), try LineRewrite(prefix: "", tags: "dc:eu")] {
            try configuration(mirror: "127.0.0.1:9101", rewrite: rewrite).validate()
        }
    }

    @Test("a mirror backend over TCP (tcp://, or --sendproto TCP without a scheme) is taken; a mirror backend given twice is still refused naming --mirror")
    func tcpMirror() throws {
        try configuration(mirror: "tcp://127.0.0.1:9101").validate()
        try configuration(mirror: "127.0.0.1:9101", sendProtocol: .tcp).validate()
        try configuration(mirror: "udp://127.0.0.1:9101", sendProtocol: .tcp).validate()
        var twice = try configuration(mirror: "tcp://127.0.0.1:9101")
        twice.mirror.append(try BackendAddress(parsing: "127.0.0.1:9101"))
        let error = #expect(throws: ConfigurationError.self) { try twice.validate() }
        #expect(error?.argument == "--mirror")
    }
}
