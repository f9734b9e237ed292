@testable import RelayKernel
import Testing
@testable import UringRelay

@Suite("Admin endpoint: health verdict, ring fingerprint, --admin, status table")
struct AdminTests {
    static let second: UInt64 = 1_000_000_000

    @Test("/healthz verdicts", arguments: [
        (true, false, 2, [9, 9] as [UInt64], [] as [String], true, "ok"),
        (true, false, 2, [9, 10], [], true, "ok"),  // 1 s exactly is not yet stale
        (true, false, 2, [8, 9], [], false, "worker 0 has published no counters for 2.0s (stale after 1.0s)"),
        (false, false, 2, [9], [], false, "starting: 1 of 2 workers started"),
        (false, false, 1, [9], [], false, "starting: 1 of 1 workers started"),
        (true, false, 1, [9], ["worker 0: io_uring_enter: Bad file descriptor (errno 9)\nmore"], false,
         "stopped on a failure: worker 0: io_uring_enter: Bad file descriptor (errno 9) more"),
        (true, true, 2, [9, 9], [], false, "stopping: draining and flushing before exit"),
    ])
    func verdicts(
        started: Bool, stopping: Bool, workers: Int, publishedSeconds: [UInt64], failures: [String], healthy: Bool, reason: String
    ) {
        let verdict = HealthVerdict.evaluate(
            started: started, stopping: stopping, expectedWorkers: workers, publishedAt: publishedSeconds.map { $0 * Self.second },
            failures: failures, now: 10 * Self.second)
        #expect(verdict == HealthVerdict(healthy: healthy, reason: reason))
    }

    /// Expected values computed apart from the relay (Python, FNV-1a 64 over the same text).
    @Test("ring fingerprint: FNV-1a 64 of the hash mode and the identities in order", arguments: [
        (["10.0.0.1:8125", "10.0.0.2:8125"], "d0db1fad0c5fbcb6"),
        (["10.0.0.2:8125", "10.0.0.1:8125"], "d6f515b48cb480ae"),
        (["10.0.0.1:8125", "10.0.0.2:8125:b"], "5a4c076f589cb6b2"),
    ])
    func fingerprint(_ identities: [String], _ expected: String) throws {
        let backends = try identities.map { try BackendAddress(parsing: $0) }
        var pool = BackendPool(
            backends: backends, addresses: backends.map { SocketAddress(numericHost: $0.host, port: $0.port)! }, policy: .rehash)
        #expect(pool.ringFingerprint == expected)
        pool.down[0] = true
        pool.policy = .hold
        #expect(pool.ringFingerprint == expected, "health and policy take no part")
    }

    @Test("--admin values", arguments: [
        ("127.0.0.1:8127", "127.0.0.1", 8127 as UInt16),
        ("0.0.0.0:0", "0.0.0.0", 0),
        ("[::1]:9000", "::1", 9000),
        ("localhost:8127", "127.0.0.1", 8127),
    ])
    func adminAddress(_ text: String, _ host: String, _ port: UInt16) throws {
        #expect(try AdminAddress.parse(text) == AdminAddress(host: host, port: port))
    }

    @Test("--admin none turns the endpoint off")
    func adminNone() throws {
        #expect(try AdminAddress.parse("none") == nil)
    }

    @Test("invalid --admin values name the value and the reason", arguments: [
        ("8127", "invalid --admin '8127': expected ADDR:PORT (e.g. 127.0.0.1:8127), [IPv6]:PORT or none"),
        ("127.0.0.1:99999", "invalid --admin '127.0.0.1:99999': port must be 0-65535"),
        ("example.com:8127", "invalid --admin 'example.com:8127': 'example.com' is not a numeric IPv4 or IPv6 address (or localhost)"),
        ("::1:8127", "invalid --admin '::1:8127': expected ADDR:PORT (e.g. 127.0.0.1:8127), [IPv6]:PORT or none"),
        ("[::1]8127", "invalid --admin '[::1]8127': expected [IPv6]:PORT, ADDR:PORT or none"),
    ])
    func invalidAdminAddress(_ text: String, _ message: String) {
        #expect(throws: ConfigurationError.self) { try AdminAddress.parse(text) }
        do { _ = try AdminAddress.parse(text) } catch { #expect(error.description == message) }
    }

    @Test("the endpoint serves GET and HEAD only, answers 404 elsewhere and 414 for an overlong target, before the relay starts")
    func endpointRoutes() throws {
        var configuration = RelayConfiguration(backends: [try BackendAddress(parsing: "127.0.0.1:9")])
        configuration.threads = 1
        let relay = try Relay(configuration: configuration, logger: .init(label: "test"))
        let endpoint = AdminEndpoint(relay: relay, version: "1.2.3")
        #expect(endpoint.respond(method: "POST", target: "/metrics") == .init(status: 405, body: "only GET and HEAD are served\n"))
        #expect(endpoint.respond(method: "BREW", target: "/metrics") == .init(status: 405, body: "only GET and HEAD are served\n"))
        for target in ["/", "/healthz", "/metrics", "/nope"] {
            #expect(endpoint.respond(method: "HEAD", target: target) == endpoint.respond(method: "GET", target: target))
        }
        #expect(endpoint.respond(method: "GET", target: "/nope").status == 404)
        #expect(endpoint.respond(method: "GET", target: "/" + String(repeating: "a", count: 2_000)).status == 414)
        #expect(endpoint.respond(method: "GET", target: "/").body.contains("statsrelay 1.2.3"))
        #expect(endpoint.respond(method: "GET", target: "/healthz") == .init(status: 503, body: "starting: 0 of 1 workers started\n"))
        #expect(endpoint.respond(method: "GET", target: "/metrics?x=1") == .init(status: 503, body: "starting: 0 of 1 workers started\n"))
    }

    @Test("the status table: one row per backend, a total, the facts, the losses and the configuration's reloads")
    func statusTable() {
        var snapshot = exampleSnapshot(backends: ["10.0.0.1:8125", "10.0.0.2:8125"])
        snapshot.configReloadsSucceeded = 2
        snapshot.configReloadsFailed = 1
        snapshot.configLastReloadSuccessful = false
        snapshot.configLastReloadSuccessUnixSeconds = 1_700_003_600.5
        let now = PrometheusSample.parse(PrometheusExposition.render(snapshot))
        // 10 lines a backend in the 2 s between the two scrapes.
        let before = now.map { sample in
            var sample = sample
            if sample.name == "statsrelay_backend_lines_sent_total" { sample.value -= 10 }
            return sample
        }
        let report = StatusReport(
            samples: now, earlier: before, interval: 2, health: (true, "ok"), address: "127.0.0.1:8127",
            unixNow: 1_700_003_725.5)
        #expect(report.render() == """
            statsrelay 9.8.7 at 127.0.0.1:8127: healthy (ok)
            io driver portable, 2 workers; ring of 2 backends, hash jump, fingerprint 0123456789abcdef

            BACKEND        STATE  SINCE  LINES SENT  LINES/S  DROPPED  DOUBTED  HELD
            10.0.0.1:8125  up     1h02m  20          5.0      0        0        0
            10.0.0.2:8125  DOWN   1h02m  13          5.0      5        0        0
            total                        33          10.0     5        0        0

            received: 12 datagrams, 40 lines (0.0/s); forwarded 33 lines
            lines dropped: missing_colon 7, refused 5
            datagrams dropped: kernel 2
            held: 64.0 KiB of 64.0 MiB in use; unconfirmed at exit so far: 0
            configuration: in force for 2m05s; reloads: 2 succeeded, 1 failed; THE LAST RELOAD FAILED (the log says why)

            """)
    }

    @Test("the status table of values no relay sends (past 2^64, 1e308, NaN, a far-past timestamp): printed, no trap")
    func statusTableOfHugeValues() {
        let now = PrometheusSample.parse("""
            statsrelay_backend_up{backend="a"} 1
            statsrelay_backend_up{backend="b"} 0
            statsrelay_backend_flap_holds_total{backend="b"} 1e308
            statsrelay_backend_state_since_timestamp_seconds{backend="a"} -1e300
            statsrelay_backend_state_since_timestamp_seconds{backend="b"} NaN
            statsrelay_backend_lines_sent_total{backend="a"} 18446744073709551615
            statsrelay_backend_lines_sent_total{backend="b"} 1e308
            statsrelay_backend_lines_dropped_total{backend="b",reason="refused"} -1e300
            statsrelay_lines_received_total{listener="udp:x"} 1e308
            statsrelay_lines_dropped_total{reason="missing_colon"} 9223372036854775808
            statsrelay_hold_in_use_bytes 1e300
            statsrelay_hold_limit_bytes NaN
            statsrelay_workers +Inf
            statsrelay_config_last_reload_success_timestamp_seconds -1e308

            """)
        let earlier = now.map { sample in
            var sample = sample
            if sample.name == "statsrelay_backend_lines_sent_total" || sample.name == "statsrelay_lines_received_total" { sample.value = 0 }
            return sample
        }
        let report = StatusReport(
            samples: now, earlier: earlier, interval: 0.5, health: (true, "ok"), address: "127.0.0.1:8127", unixNow: 1_700_000_000)
        #expect(report.render() == """
            statsrelay ? at 127.0.0.1:8127: healthy (ok)
            io driver ?, inf workers; ring of 2 backends, hash ?, fingerprint ?

            BACKEND  STATE                                       SINCE                LINES SENT              LINES/S                 DROPPED  DOUBTED  HELD
            a        up                                          106751991167300d15h  1.8446744073709552e+19  3.6893488147419103e+19  0        0        0
            b        DOWN (flapping: 9223372036854775807 holds)  0s                   1e+308                  inf                     -1e+300  0        0
            total                                                                     1e+308                  inf                     -1e+300  0        0

            received: 0 datagrams, 1e+308 lines (inf/s); forwarded 0 lines
            lines dropped: missing_colon 9.223372036854776e+18
            datagrams dropped: none
            held: 9.313225746154786e+290 GiB of nan B in use; unconfirmed at exit so far: 0
            configuration: in force for 106751991167300d15h; reloads: 0 succeeded, 0 failed

            """)
    }

    @Test("status durations: the two largest units", arguments: [
        (0.0, "0s"), (59.9, "59s"), (61, "1m01s"), (3_725, "1h02m"), (90_061, "1d01h"), (-5, "0s"),
        (1e300, "106751991167300d15h"), (.nan, "0s"), (-.infinity, "0s"), (.infinity, "106751991167300d15h"),
    ])
    func durations(_ seconds: Double, _ text: String) {
        #expect(StatusReport.duration(seconds) == text)
    }
}
