/// A configuration file that cannot be used, named by the file, the line, the key path, the value
/// as written and why.
///
/// Renders as one line an operator can act on:
///
/// ```
/// /etc/statsrelay/statsrelay.yaml:4: packet-len: invalid value '1': must be 2-65507 bytes
/// /etc/statsrelay/statsrelay.yaml:3: packet-length: unknown key (did you mean 'packet-len'?)
/// ^ file                          ^ line ^ key path ^ value (when the value is at fault)
/// ```
///
/// Key paths are written as in `yq`: `backends[1].health-check-port` (lists count from 0).
public struct ConfigFileError: Error, CustomStringConvertible, Sendable, Equatable {
    /// The file (its path as given), or a name for text that came from elsewhere.
    public var source: String
    /// The line the key or value is on (from 1), when known.
    public var line: Int?
    /// Where in the file: `port`, `backends[2]`, `backends[0].health-check-port`; empty for the
    /// file as a whole.
    public var keyPath: String
    /// The value as written, when the value is what is wrong (not for an unknown key).
    public var value: String?
    /// What is wrong, and where it helps, what would be right.
    public var reason: String

    public init(source: String, line: Int?, keyPath: String, value: String?, reason: String) {
        self.source = source
        self.line = line
        self.keyPath = keyPath
        self.value = value
        self.reason = reason
    }

    public var description: String {
        var text = source
        if let line { text += ":\(line)" }
        text += ": "
        if !keyPath.isEmpty { text += "\(keyPath): " }
        if let value { text += "invalid value '\(value)': " }
        return text + reason
    }
}
