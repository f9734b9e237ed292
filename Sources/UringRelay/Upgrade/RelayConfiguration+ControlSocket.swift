extension RelayConfiguration {
    /// `--control-socket` / `control-socket:` as a path, or `nil` for `none`.
    ///
    /// - Throws: `ConfigurationError` for an empty path, one with a NUL byte, or one longer than
    ///   a Unix socket address holds (107 bytes).
    public static func controlSocketPath(_ text: String) throws(ConfigurationError) -> String? {
        if text == "none" { return nil }
        guard !text.isEmpty else {
            throw ConfigurationError(argument: "--control-socket", value: text, reason: "expected a path, or none")
        }
        guard !text.utf8.contains(0) else {
            throw ConfigurationError(argument: "--control-socket", value: text, reason: "a path cannot hold a NUL byte")
        }
        guard text.utf8.count <= 107 else {
            throw ConfigurationError(
                argument: "--control-socket", value: text, reason: "\(text.utf8.count) bytes; a Unix socket path holds at most 107")
        }
        return text
    }
}
