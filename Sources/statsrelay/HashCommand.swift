import RelayKernel
import ArgumentParser
import UringRelay

/// `statsrelay hash --backends A,B,C NAME…`: which backend each metric name goes to.
struct HashCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hash",
        abstract: "Print the backend each metric name is routed to.",
        discussion: """
            Give the backends exactly as the relay is given them (order matters). A name may also \
            be a whole StatsD line: only the part before the first ':' is hashed. NAME '-' reads \
            names from standard input, one per line: use it for thousands of names (the argument \
            parser takes time quadratic in the number of arguments). With \
            --health-check, every backend is checked once now and the routing shown is the one a \
            relay with the same health view uses (the --on-backend-down policy applies).
            """
    )

    @Option(name: .customLong("backends"), help: "Backends in routing order, comma-separated or repeated.")
    var backends: [String] = []

    @OptionGroup var health: HealthOptions

    @Argument(help: "Metric names (or lines); '-' reads them from standard input, one per line.")
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
        do {
            var configuration = RelayConfiguration(backends: try parsedBackends())
            try health.apply(to: &configuration)
        } catch { throw ValidationError(error.description) }
        if names.isEmpty { throw ValidationError("give at least one metric NAME") }
    }

    func run() throws {
        let parsed = try parsedBackends()
        var configuration = RelayConfiguration(backends: parsed)
        try health.apply(to: &configuration)
        var router = Router(backendCount: max(parsed.count, 1), policy: configuration.onBackendDown)
        if configuration.healthCheck != .none && !parsed.isEmpty {
            for (index, failure) in try checkOnce(configuration).enumerated() {
                guard let failure else { continue }
                router.setDown(index, true)
                printError("backend \(parsed[index]) is down: \(failure)")
            }
        }
        // Each name is hashed and printed as it is read: linear in the names, whatever their
        // number. (Thousands given as arguments are slow before this runs: swift-argument-parser
        // 1.8 re-copies the set of used arguments for every value of an array argument, and
        // removes each consumed argument with a linear search.)
        let fromInput = names == ["-"]
        var given = names.makeIterator()
        while let name = fromInput ? readLine(strippingNewline: true) : given.next() {
            let key = String(name.prefix { $0 != ":" })
            let hash = FNV1a.hash64(key)
            guard !parsed.isEmpty else {
                print("\(key) fnv1a64=0x\(String(hash, radix: 16))")
                continue
            }
            let details = "index=\(router.primary(forHash: hash)) fnv1a64=0x\(String(hash, radix: 16))"
            switch router.route(hash: hash) {
            case .send(let index):
                print("\(key) \(parsed[index]) \(details)")
            case .rehash(let primary, let other):
                print("\(key) \(parsed[other]) \(details) (\(parsed[primary]) is down: rehashed)")
            case .hold(let primary):
                print("\(key) \(parsed[primary]) \(details) (down: held until it recovers)")
            case .drop(let primary):
                print("\(key) - \(details) (\(parsed[primary]) is down: dropped)")
            }
        }
    }

    /// Runs one round of checks, as a relay's health monitor would.
    private func checkOnce(_ configuration: RelayConfiguration) throws -> [String?] {
        var targets: [TCPProbe.Target] = []
        let monitor = try HealthMonitor(
            configuration: configuration,
            routing: RoutingState(addresses: try BackendLookup(backends: configuration.backends).wait()),
            logger: .init(label: "hash"))
        targets = monitor.targets(for: monitor.status.map(\.address))
        return TCPProbe.run(targets, timeoutMilliseconds: Int(configuration.healthTimeoutNanoseconds / 1_000_000))
    }
}
