import RelayKernel

/// A bad setting, named by the argument or key it came from and why it is bad.
///
/// Renders as `invalid backend 'foo:99999': port must be 1-65535`.
public struct ConfigurationError: Error, CustomStringConvertible, Sendable, Equatable {
    /// The argument or key, e.g. `backend`, `--packet-len`.
    public var argument: String
    /// The value as given.
    public var value: String
    /// What is wrong with it.
    public var reason: String

    public init(argument: String, value: String, reason: String) {
        self.argument = argument
        self.value = value
        self.reason = reason
    }

    public var description: String { "invalid \(argument) '\(value)': \(reason)" }
}
