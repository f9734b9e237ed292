import ArgumentParser
import RelayKernel
import UringRelay

/// `statsrelay check-config FILE`: validates a configuration file as `run --config FILE` would
/// (every key, every value, backend names resolved and their addresses checked), and prints the
/// configuration it gives, every key included.
struct CheckConfigCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check-config",
        abstract: "Validate a configuration file and print the configuration it gives (every key).",
        discussion: """
            Exit status 0: the file is valid and its configuration is printed (YAML; the defaults \
            fill the keys it leaves out). 64: it is not; the error names the file, the line, the key \
            path, the value and the reason. 75: a backend's name did not resolve. Check a file with \
            this before a SIGHUP: a reload refuses the same files.
            """
    )

    @Argument(help: ArgumentHelp("The configuration file.", valueName: "file"))
    var file: String

    @Option(name: .customLong("resolve-timeout"), parsing: .unconditional, help: "Longest wait for the resolver.")
    var resolveTimeout = "10s"

    func run() throws {
        let limit: UInt64
        do { limit = try DurationParser.nanoseconds(resolveTimeout, argument: "--resolve-timeout", in: 1_000_000...300_000_000_000) } catch {
            printError("\(error)")
            throw ExitCode(64)
        }
        let parsed: ConfigFile
        let configuration: RelayConfiguration
        do {
            parsed = try ConfigFile.load(path: file)
            configuration = try ConfigFile.resolve(file: parsed, flags: ConfigFile(), allowedCPUs: WorkerThread.allowedCPUs)
        } catch {
            printError("\(error)")
            throw ExitCode(64)
        }
        // As at start-up: names resolved, then every address checked (same address twice,
        // unusable, or this relay's own listener), the mirror's too.
        let addresses: [SocketAddress]
        let mirrorAddresses: [SocketAddress]
        do {
            addresses = try BackendLookup(backends: configuration.backends, limitNanoseconds: limit).wait()
            mirrorAddresses = configuration.mirror.isEmpty
                ? [] : try BackendLookup(backends: configuration.mirror, limitNanoseconds: limit).wait()
        } catch let error as BackendResolutionError {
            printError("\(error)")
            throw ExitCode(75)
        } catch {
            printError("\(error)")
            throw ExitCode(71)
        }
        do throws(ConfigurationError) {
            try BackendAddressCheck.verify(
                backends: configuration.backends, addresses: addresses,
                listeners: configuration.listenAddresses, tcpListeners: configuration.tcpListenAddresses,
                sendProtocol: configuration.sendProtocol, healthCheck: (configuration.healthCheck, configuration.healthCheckPort))
            try BackendAddressCheck.verify(
                mirror: configuration.mirror, addresses: mirrorAddresses,
                listeners: configuration.listenAddresses, tcpListeners: configuration.tcpListenAddresses,
                sendProtocol: configuration.sendProtocol)
        } catch {
            printError("\(parsed.located(error))")
            throw ExitCode(64)
        }
        print(ConfigFile.render(configuration, header: [
            "statsrelay check-config \(file): valid.",
            "Every key, as `statsrelay run --config \(file)` would run it without other options",
            "(threads: one per CPU this process may use, unless the file says).",
        ]), terminator: "")
    }
}
