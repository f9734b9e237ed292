import RelayKernel
import ArgumentParser
import UringRelay

/// `statsrelay`: relays StatsD lines to backends by metric name; `check-config`, `hash`, `sink` and
/// `status` help operate it.
@main
struct StatsRelayCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "statsrelay",
        abstract: "A StatsD relay on io_uring: each metric name goes to exactly one backend.",
        version: StatsRelayVersion.string,
        subcommands: [RunCommand.self, CheckConfigCommand.self, HashCommand.self, SinkCommand.self, StatusCommand.self],
        defaultSubcommand: RunCommand.self
    )
}

/// The version printed by `--version`.
enum StatsRelayVersion {
    /// The version number alone (`statsrelay_build_info{version=…}`).
    static let number = "0.1.0"
    static let string = "statsrelay \(number)"
}
