import RelayKernel
import Logging
import Synchronization

/// The relay's log handler: swift-log's standard line format (`TIMESTAMP LEVEL LABEL: METADATA
/// [SOURCE] MESSAGE`, the one operators and tests already read), written through
/// `LogWriter.standardError`, so a log line that cannot be written is dropped and counted
/// (`statsrelay.log_write_errors`) and never stops, slows or kills the relay.
///
/// With `format` `.json` (`--log-format json`), each event is one JSON object on one line
/// instead (`JSONLogLine`): the same events, the same writer.
///
/// Bootstrap it once at start-up: `LoggingSystem.bootstrap { RelayLogHandler(label: $0, level: control) }`.
/// Every handler made with one `LevelControl` follows it: a reload changes the level of every
/// logger at once (`LevelControl.level`), with one atomic store.
public struct RelayLogHandler: LogHandler {
    /// The lowest level logged, shared by every handler made with it and changeable while the
    /// relay runs (`log-level` at a reload). Reading it is one relaxed atomic load, as every log
    /// call does through `Logger.logLevel`.
    public final class LevelControl: Sendable {
        private let raw: Atomic<UInt8>

        /// A control starting at `level`.
        public init(_ level: Logger.Level) { raw = Atomic(Self.code(level)) }

        /// The level in force; setting it takes effect for the next log call on any thread.
        public var level: Logger.Level {
            get {
                switch raw.load(ordering: .relaxed) {
                case 0: .trace
                case 1: .debug
                case 2: .info
                case 3: .notice
                case 4: .warning
                case 5: .error
                default: .critical
                }
            }
            set { raw.store(Self.code(newValue), ordering: .relaxed) }
        }

        private static func code(_ level: Logger.Level) -> UInt8 {
            switch level {
            case .trace: 0
            case .debug: 1
            case .info: 2
            case .notice: 3
            case .warning: 4
            case .error: 5
            case .critical: 6
            }
        }
    }

    /// How events are written (`--log-format`).
    public enum Format: String, Sendable, CaseIterable {
        /// swift-log's standard line: `TIMESTAMP LEVEL LABEL: METADATA [SOURCE] MESSAGE`.
        case text
        /// One JSON object per line (`JSONLogLine`).
        case json
    }

    /// Formats the line; its stream is the shared writer. Its own level is left at `trace`:
    /// the level is decided by `logLevel` before an event reaches it.
    private var formatter: StreamLogHandler
    /// The level shared with other handlers.
    private let control: LevelControl
    /// A level set on this handler alone (`logger.logLevel = …`), which overrides `control`.
    private var override: Logger.Level?
    private let format: Format
    private let label: String
    private let writer: LogWriter

    /// A handler for loggers labelled `label`, logging at the level `control` holds and above,
    /// in `format`.
    public init(label: String, level control: LevelControl, format: Format = .text, writer: LogWriter = .standardError) {
        formatter = StreamLogHandler(label: label, stream: Output(writer: writer))
        formatter.logLevel = .trace
        self.control = control
        self.format = format
        self.label = label
        self.writer = writer
    }

    /// A handler for loggers labelled `label`, logging at `level` and above, in `format`.
    public init(label: String, level: Logger.Level = .info, format: Format = .text, writer: LogWriter = .standardError) {
        self.init(label: label, level: LevelControl(level), format: format, writer: writer)
    }

    public func log(event: LogEvent) {
        switch format {
        case .text:
            formatter.log(event: event)
        case .json:
            // Merged as StreamLogHandler merges them: the handler's, the provider's, the event's.
            var merged = formatter.metadata
            if let provided = formatter.metadataProvider?.get() { merged.merge(provided) { _, new in new } }
            if let metadata = event.metadata { merged.merge(metadata) { _, new in new } }
            writer.write(JSONLogLine.render(
                level: event.level, message: event.message.description, label: label, source: event.source, metadata: merged,
                error: event.error.map { "\($0)" }, unixSeconds: Relay.unixTime()))
        }
    }

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
        get { override ?? control.level }
        set { override = newValue }
    }

    /// The formatter's stream: one `write` per log line, which never waits for the reader.
    private struct Output: TextOutputStream, Sendable {
        let writer: LogWriter
        mutating func write(_ string: String) { writer.write(string) }
    }
}
