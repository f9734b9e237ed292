import RelayKernel
import ArgumentParser
import UringRelay

/// `statsrelay hash --backends A,B,C NAME…`: which backend each metric name goes to.
struct HashCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hash",
        abstract: "Print the backend each metric name is routed to.",
        discussion: """
            Give the backends, --hash, --hash-key and --metrics-prefix exactly as the relay is \
            given them (under jump, order matters; on the etsy and ketama rings, host:port and \
            weights do). A name may also be a whole StatsD or DogStatsD line: it is keyed as the \
            relay keys it (a metric by its name, with the prefix; a service check by its name, an \
            event by its title; under name+tags, with its tags sorted), and the key is what is \
            printed first. A line the relay would drop is printed with the reason. Each answer shows \
            the backend's index and the key's value: fnv1a64 under jump, md5 (the first 4 bytes \
            of the name's md5 read little-endian, its place on the ring) under etsy and ketama. \
            NAME '-' reads names from standard input, one per line: use it for thousands of names \
            (the argument parser takes time quadratic in the number of arguments). With \
            --health-check, every backend is checked once now and the routing shown is the one a \
            relay with the same health view uses (the --on-backend-down policy applies).
            """
    )

    @Option(name: .customLong("backends"), help: "Backends in routing order, HOST:PORT[:INSTANCE][=WEIGHT], comma-separated or repeated.")
    var backends: [String] = []

    @Option(
        name: .customLong("hash"),
        help: ArgumentHelp(
            "jump (FNV-1a 64 and jump hash: the Go StatsRelay), etsy (etsy statsd proxy.js's hashring) or ketama (twemproxy's md5 ketama).",
            valueName: "mode"))
    var hash: HashMode = .jump

    @Option(name: .customLong("hash-key"), help: ArgumentHelp(
        "name or name+tags, as the relay's --hash-key (default: name).", valueName: "key"))
    var hashKey: String = HashKeyMode.name.rawValue

    @Option(name: [.customLong("metrics-prefix"), .customLong("metrics-prefix", withSingleDash: true)], help: ArgumentHelp(
        "The relay's --metrics-prefix: metric names are keyed as P.name (default: none).", valueName: "P"))
    var metricsPrefix: String = ""

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

    /// `--hash-key` and `--metrics-prefix`, checked.
    private func keying() throws(ConfigurationError) -> (HashKeyMode, LineRewrite) {
        guard let mode = HashKeyMode(rawValue: hashKey) else {
            throw ConfigurationError(
                argument: "--hash-key", value: hashKey, reason: "expected \(HashKeyMode.allCases.map(\.rawValue).joined(separator: " or "))")
        }
        return (mode, try LineRewrite(prefix: metricsPrefix, tags: ""))
    }

    func validate() throws {
        do {
            _ = try keying()
            var configuration = RelayConfiguration(backends: try parsedBackends())
            try health.apply(to: &configuration)
            try hash.check(configuration.backends)
        } catch { throw ValidationError(error.description) }
        if names.isEmpty { throw ValidationError("give at least one metric NAME") }
    }

    func run() throws {
        let parsed = try parsedBackends()
        var configuration = RelayConfiguration(backends: parsed)
        try health.apply(to: &configuration)
        // Without backends only the key values are printed.
        var router = parsed.isEmpty
            ? Router(backendCount: 1, policy: configuration.onBackendDown)
            : Router(backends: parsed, hashMode: hash, policy: configuration.onBackendDown)
        let valueLabel = hash == .jump ? "fnv1a64" : "md5"
        let valueDigits = hash == .jump ? 1 : 8
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
        let (mode, rewrite) = try keying()
        let fromInput = names == ["-"]
        var given = names.makeIterator()
        while let name = fromInput ? readLine(strippingNewline: true) : given.next() {
            // A bare name is keyed as the line `name:` would be.
            let isLine = name.contains(":") || name.hasPrefix("_sc|")
            guard let keyed = rewrite.rewrite(line: isLine ? name : name + ":", hashKey: mode) else {
                print("\(name) - dropped by the relay: \(Self.dropReason(name, isLine: isLine, rewrite: rewrite))")
                continue
            }
            let key = String(decoding: keyed.key, as: UTF8.self)
            let hex = String(Router.keyValue(forName: key, hashMode: hash), radix: 16)
            let value = "\(valueLabel)=0x\(String(repeating: "0", count: max(0, valueDigits - hex.count)))\(hex)"
            guard !parsed.isEmpty else {
                print("\(key) \(value)")
                continue
            }
            let details = "index=\(router.backend(forName: key)) \(value)"
            switch router.route(name: key) {
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

    /// Why the relay drops `name` (the scanner's reason, or the rewrite's length).
    private static func dropReason(_ name: String, isLine: Bool, rewrite: LineRewrite) -> String {
        let bytes = Array((isLine ? name : name + ":").utf8.prefix { $0 != UInt8(ascii: "\n") && $0 != UInt8(ascii: "\r") })
        var offset = 0
        if case .malformed(let reason)? = LineScanner.next(in: bytes.span.bytes, from: &offset) {
            return String(RelayCounter.dropped(reason).name.split(separator: ".").last ?? "")
        }
        return String(RelayCounter.dropped(.tooLongRewritten).name.split(separator: ".").last ?? "")
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

extension HashMode: ExpressibleByArgument {}
