import RelayKernel
import Logging

/// The relay's log handler: swift-log's standard line format (`TIMESTAMP LEVEL LABEL: METADATA
/// [SOURCE] MESSAGE`, the one operators and tests already read), written through
/// `LogWriter.standardError`, so a log line that cannot be written is dropped and counted
/// (`statsrelay.log_write_errors`) and never stops, slows or kills the relay.
///
/// Bootstrap it once at start-up: `LoggingSystem.bootstrap { RelayLogHandler(label: $0, level: level) }`.
public struct RelayLogHandler: LogHandler {
    /// Formats the line; its stream is the shared writer.
    private var formatter: StreamLogHandler

    /// A handler for loggers labelled `label`, logging at `level` and above.
    public init(label: String, level: Logger.Level = .info, writer: LogWriter = .standardError) {
        formatter = StreamLogHandler(label: label, stream: Output(writer: writer))
        formatter.logLevel = level
    }

    public func log(event: LogEvent) { formatter.log(event: event) }

    public var metadataProvider: Logger.MetadataProvider? {
        get { formatter.metadataProvider }
        set { formatter.metadataProvider = newValue }
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { formatter[metadataKey: key] }
        set { formatter[metadataKey: key] = newValue }
    }

    public var metadata: Logger.Metadata {
        get { formatter.metadata }
        set { formatter.metadata = newValue }
    }

    public var logLevel: Logger.Level {
        get { formatter.logLevel }
        set { formatter.logLevel = newValue }
    }

    /// The formatter's stream: one `write` per log line, which never waits for the reader.
    private struct Output: TextOutputStream, Sendable {
        let writer: LogWriter
        mutating func write(_ string: String) { writer.write(string) }
    }
}
