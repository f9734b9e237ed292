import RelayKernel

extension RelayConfiguration {
    /// Checks the mirror pool's settings (`--mirror`, `--mirror-hash`, `--mirror-sample`).
    ///
    /// - Throws: `ConfigurationError` naming `--mirror` (a backend given twice, or a weight the
    ///   mirror's hash mode takes not) or `--mirror-sample` (outside (0, 1]).
    func validateMirror() throws(ConfigurationError) {
        guard mirrorSample > 0 && mirrorSample <= 1 else {
            throw ConfigurationError(
                argument: "--mirror-sample", value: "\(mirrorSample)",
                reason: "expected a number in (0, 1]: the share of metric names mirrored")
        }
        guard !mirror.isEmpty else { return }
        var seen: Set<String> = []
        for backend in mirror {
            let key = SocketAddress(numericHost: backend.host, port: backend.port)?.canonical.description
                ?? "\(backend.host.lowercased()):\(backend.port)"
            guard seen.insert(key).inserted else {
                throw ConfigurationError(argument: "--mirror", value: backend.description, reason: "given twice: give each mirror backend once")
            }
        }
        do { try mirrorHashMode.check(mirror) } catch {
            throw ConfigurationError(
                argument: "--mirror", value: error.value, reason: error.reason.replacing("--hash", with: "--mirror-hash"))
        }
    }
}

extension ConfigFile {
    /// Writes the mirror keys this file sets into `configuration`.
    ///
    /// - Throws: `ConfigurationError` naming the key path (`mirror[1]`, `mirror-hash`,
    ///   `mirror-sample`) and the reason.
    func applyMirror(to configuration: inout RelayConfiguration) throws(ConfigurationError) {
        if let mirror {
            var parsed: [BackendAddress] = []
            for (index, text) in mirror.enumerated() {
                do { parsed.append(try BackendAddress(parsing: text)) } catch {
                    throw ConfigurationError(argument: "mirror[\(index)]", value: error.value, reason: error.reason)
                }
            }
            configuration.mirror = parsed
        }
        if let mirrorHash {
            guard let mode = HashMode(rawValue: mirrorHash) else {
                throw ConfigurationError(
                    argument: "mirror-hash", value: mirrorHash,
                    reason: "expected \(Self.choices(HashMode.allCases.map(\.rawValue)))")
            }
            configuration.mirrorHashMode = mode
        }
        if let mirrorSample {
            guard let rate = Double(mirrorSample), rate > 0, rate <= 1 else {
                throw ConfigurationError(
                    argument: "mirror-sample", value: mirrorSample,
                    reason: "expected a number in (0, 1]: the share of metric names mirrored")
            }
            configuration.mirrorSample = rate
        }
    }
}
