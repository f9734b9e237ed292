import ArgumentParser
import UringRelay

/// `statsrelay hash --backends A,B,C NAME…`: which backend each metric name goes to.
struct HashCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hash",
        abstract: "Print the backend each metric name is routed to.",
        discussion: """
            Give the backends exactly as the relay is given them (order matters). A name may also \
            be a whole StatsD line: only the part before the first ':' is hashed.
            """
    )

    @Option(name: .customLong("backends"), help: "Backends in routing order, comma-separated or repeated.")
    var backends: [String] = []

    @Argument(help: "Metric names (or lines).")
    var names: [String]

    /// The backends, with comma-separated lists split.
    private func parsedBackends() throws(ConfigurationError) -> [BackendAddress] {
        var parsed: [BackendAddress] = []
        for text in backends.flatMap({ $0.split(separator: ",").map(String.init) }) {
            parsed.append(try BackendAddress(parsing: text))
        }
        return parsed
    }

    func validate() throws {
        do { _ = try parsedBackends() } catch { throw ValidationError(error.description) }
        if names.isEmpty { throw ValidationError("give at least one metric NAME") }
    }

    func run() throws {
        let parsed = try parsedBackends()
        for name in names {
            let key = String(name.prefix { $0 != ":" })
            let hash = FNV1a.hash64(key)
            if parsed.isEmpty {
                print("\(key) fnv1a64=0x\(String(hash, radix: 16))")
            } else {
                let index = Router(backendCount: parsed.count).backend(forName: key)
                print("\(key) \(parsed[index]) index=\(index) fnv1a64=0x\(String(hash, radix: 16))")
            }
        }
    }
}
