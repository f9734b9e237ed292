extension ConfigFile {
    /// The configuration in force from the defaults, then `file`, then the command line's
    /// `flags` (each given flag overrides the file's key; positional backends replace the file's
    /// list), validated.
    ///
    /// - Parameters:
    ///   - file: the configuration file, if the relay has one (`--config`).
    ///   - flags: the options given on the command line, as a `ConfigFile` of the same keys.
    ///   - allowedCPUs: the CPUs this process may use (the default `threads`).
    /// - Throws: `ConfigFileError` for a bad key or value of the file (path, line, key path,
    ///   value, reason); `ConfigurationError` naming the flag (`--packet-len`, `backend`) for a
    ///   bad flag.
    public static func resolve(file: ConfigFile?, flags: ConfigFile, allowedCPUs: [Int]) throws -> RelayConfiguration {
        var configuration = RelayConfiguration(backends: [])
        if let file {
            // A key a flag overrides is not read at all: a bad value there is never in force.
            let kept = file.overridden(by: flags)
            do { try kept.apply(to: &configuration) } catch { throw file.located(error) }
        }
        do { try flags.apply(to: &configuration) } catch { throw Self.asFlag(error) }
        if let threads = flags.threads {
            try configuration.settleThreads(requested: threads, argument: "--threads", allowed: allowedCPUs)
        } else {
            do { try configuration.settleThreads(requested: file?.threads, argument: "threads", allowed: allowedCPUs) } catch {
                if let file { throw file.located(error) }
                throw error
            }
        }
        do { try configuration.validate() } catch {
            let key = Self.key(of: error)
            if let file, !flags.keysSet.contains(key) { throw file.located(error) }
            throw error
        }
        return configuration
    }

    /// This file without the keys `flags` sets (positional backends take the whole list).
    public func overridden(by flags: ConfigFile) -> ConfigFile {
        var kept = self
        func drop<T>(_ key: WritableKeyPath<ConfigFile, T?>) { if flags[keyPath: key] != nil { kept[keyPath: key] = nil } }
        drop(\.bind); drop(\.port); drop(\.backends); drop(\.packetLen); drop(\.flushInterval); drop(\.shutdownTimeout)
        drop(\.rcvbuf); drop(\.maxDatagram); drop(\.receiveBuffers); drop(\.minWait); drop(\.threads); drop(\.cpus)
        drop(\.ioBackend); drop(\.hash); drop(\.reuseportGroup); drop(\.healthCheck); drop(\.healthCheckPort); drop(\.healthInterval)
        drop(\.healthTimeout); drop(\.healthRise); drop(\.healthFall); drop(\.onBackendDown); drop(\.holdBytes)
        drop(\.replayRate); drop(\.dnsRefresh); drop(\.admin); drop(\.logLevel)
        drop(\.prefix)
        drop(\.selfMetricsInterval)
        drop(\.logFormat)
        drop(\.stopDelay)
        drop(\.flapHoldMax)
        drop(\.flapHold)
        drop(\.validate)
        drop(\.hashKey)
        drop(\.metricsPrefix)
        drop(\.metricsTags)
        drop(\.sendproto); drop(\.tcpBackendQueue)
        drop(\.tcpPort); drop(\.tcpMaxConnections); drop(\.tcpIdleTimeout)
        drop(\.controlSocket)
        drop(\.mirror); drop(\.mirrorHash); drop(\.mirrorSample)
        if flags.listeners != nil {
            // `--listen` replaces every listener of the file, whichever form it used.
            kept.listeners = nil
            kept.bind = nil
            kept.port = nil
        }
        return kept
    }

    /// An error of `apply(to:)` on the command line's settings, named by the flag as the
    /// command line spells it: `--packet-len`, or `backend` for a positional backend.
    public static func asFlag(_ error: ConfigurationError) -> ConfigurationError {
        var named = error
        if error.argument.hasPrefix("unix-socket") {
            named.argument = error.argument.hasSuffix(".mode") ? "--unix-socket-mode" : "--unix-socket"
        } else if error.argument.hasPrefix("backends") {
            named.argument = "backend"
        } else if error.argument.hasPrefix("listeners") {
            named.argument = "--listen"
        } else if error.argument.hasPrefix("mirror[") {
            named.argument = "--mirror"
        } else {
            named.argument = "--" + error.argument
        }
        return named
    }

    /// The top-level key an error of `apply(to:)` or `RelayConfiguration.validate()` is about.
    static func key(of error: ConfigurationError) -> String {
        let argument = error.argument
        if argument.hasPrefix("--") { return String(argument.dropFirst(2)) }
        if argument == "backend" || argument.hasPrefix("backends") { return "backends" }
        return String(argument.prefix { $0 != "." && $0 != "[" })
    }

    /// `error` (from `apply(to:)`, a key path, or from `validate()`, a flag's name) as this
    /// file's error, at the line of the key it is about.
    public func located(_ error: ConfigurationError) -> ConfigFileError {
        var path = error.argument
        if path.hasPrefix("--") { path = String(path.dropFirst(2)) }
        if (path == "bind" || path == "port"), listeners != nil, lines[path] == nil {
            path = lines["listeners[0].\(path)"] != nil ? "listeners[0].\(path)" : "listeners[0]"
        }
        if path == "backend", let backends {
            // `validate()` names a backend by its one-line form: find which entry it is.
            let index = backends.indices.first { index in
                var probe = RelayConfiguration(backends: [])
                var one = ConfigFile()
                one.backends = [backends[index]]
                return (try? one.apply(to: &probe)).map { probe.backends.first?.description == error.value } ?? false
            }
            path = index.map { "backends[\($0)]" } ?? "backends"
        }
        let topLevel = String(path.prefix { $0 != "." && $0 != "[" })
        let line = lines[path] ?? lines[topLevel]
        // A default at odds with a key the file sets (health-timeout against health-interval):
        // say that the value is the default, and name the other key as the file spells it.
        var reason = error.reason.replacing("--health-interval", with: "health-interval")
        if line == nil, !error.value.isEmpty, path != "backends" { reason += " (\(path) is at its default: set it too)" }
        return ConfigFileError(source: source, line: line, keyPath: path, value: error.value.isEmpty ? nil : error.value, reason: reason)
    }
}
