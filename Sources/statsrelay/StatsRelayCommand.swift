import RelayKernel
import ArgumentParser
import UringRelay

/// `statsrelay`: relays StatsD lines to backends by metric name; `hash` and `sink` help operate it.
@main
struct StatsRelayCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "statsrelay",
        abstract: "A StatsD relay on io_uring: each metric name goes to exactly one backend.",
        version: StatsRelayVersion.string,
        subcommands: [RunCommand.self, HashCommand.self, SinkCommand.self],
        defaultSubcommand: RunCommand.self
    )
}

/// The version printed by `--version`.
enum StatsRelayVersion {
    static let string = "statsrelay 0.1.0"
}
