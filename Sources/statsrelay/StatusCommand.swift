import ArgumentParser
import Glibc
import RelayKernel
import UringRelay

/// `statsrelay status`: the running relay's backends, traffic and losses as a table, read
/// from its admin endpoint's `/metrics` (and `/healthz`).
struct StatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Show a running relay's backends, traffic and drops, from its admin endpoint.",
        discussion: """
            Reads /metrics twice, --interval apart, for the per-second rates (--interval 0: once, \
            no rates), and /healthz. Exits 69 when the endpoint cannot be reached, does not answer, \
            or is not a statsrelay admin endpoint (its /metrics has no statsrelay_build_info).
            """
    )

    @Option(name: .customLong("admin"), help: "The relay's admin endpoint, ADDR:PORT.")
    var admin = AdminAddress.defaultSpec

    @Option(name: .customLong("interval"), help: "Time between the two reads the rates come from (e.g. 1s; 0 reads once).")
    var interval = "1s"

    /// Why the endpoint's answer could not be used.
    struct Unusable: Error, CustomStringConvertible {
        var description: String
    }

    func validate() throws {
        let address: AdminAddress?
        do { address = try AdminAddress.parse(admin) } catch { throw ValidationError(error.description) }
        if address == nil { throw ValidationError("status needs the relay's admin endpoint: --admin ADDR:PORT, not none") }
        if interval != "0" {
            do { _ = try DurationParser.nanoseconds(interval, argument: "--interval") } catch { throw ValidationError(error.description) }
        }
    }

    func run() throws {
        guard let address = try AdminAddress.parse(admin) else { throw ExitCode(64) }
        let pause = interval == "0" ? 0 : try DurationParser.nanoseconds(interval, argument: "--interval")
        do {
            var earlier: [PrometheusSample]?
            var started = MonotonicClock.nanoseconds()
            if pause > 0 {
                earlier = try fetchMetrics(address)
                started = MonotonicClock.nanoseconds()
                // The rates' interval: nothing to wait for but time itself.
                var waited: UInt64 = 0
                while waited < pause {
                    usleep(UInt32(min(pause - waited, 100_000_000) / 1_000))
                    waited = MonotonicClock.nanoseconds() - started
                }
            }
            let samples = try fetchMetrics(address)
            let elapsed = Double(MonotonicClock.nanoseconds() - started) / 1e9
            let health = try AdminClient.get("/healthz", from: address)
            let report = StatusReport(
                samples: samples, earlier: earlier, interval: elapsed,
                health: (health.status == 200, health.body.split(separator: "\n").first.map(String.init) ?? "HTTP \(health.status)"),
                address: address.description, unixNow: Relay.unixTime())
            print(report.render(), terminator: "")
        } catch {
            printError("statsrelay status: \(error) (is a relay running with --admin \(address)?)")
            throw ExitCode(69)
        }
    }

    /// `/metrics` from `address`, as samples.
    ///
    /// - Throws: `Unusable` when it is not 200, or has no `statsrelay_build_info` (another HTTP
    ///   server on that port, which must not pass for a healthy relay).
    private func fetchMetrics(_ address: AdminAddress) throws -> [PrometheusSample] {
        let response = try AdminClient.get("/metrics", from: address)
        guard response.status == 200 else {
            let line = response.body.split(separator: "\n").first.map(String.init) ?? ""
            throw Unusable(description: "GET http://\(address)/metrics answered \(response.status): \(line)")
        }
        let samples = PrometheusSample.parse(response.body)
        guard samples.contains(where: { $0.name == "statsrelay_build_info" }) else {
            throw Unusable(description: "GET http://\(address)/metrics answered 200 without statsrelay_build_info: not a statsrelay admin endpoint")
        }
        return samples
    }
}
