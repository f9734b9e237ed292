import RelayKernel
import Yams

extension ConfigFile {
    /// Reads and decodes the file at `path`.
    ///
    /// - Throws: `ConfigFileError` naming the file and, for what is in it, the line and key path;
    ///   a file that cannot be read is named with the failed call (`open …: No such file or
    ///   directory (errno 2)`).
    public static func load(path: String) throws(ConfigFileError) -> ConfigFile {
        let bytes: [UInt8]
        do { bytes = try FileContents.read(path: path) } catch {
            throw ConfigFileError(source: path, line: nil, keyPath: "", value: nil, reason: "cannot be read: \(error)")
        }
        // A UTF-8 byte order mark (what some Windows editors write first) is no text: libyaml
        // skips it but counts it as a column, and the second key then seems indented.
        let withoutMark = bytes.starts(with: [0xEF, 0xBB, 0xBF]) ? bytes.dropFirst(3) : bytes[...]
        guard let text = String(validating: withoutMark, as: UTF8.self) else {
            throw ConfigFileError(source: path, line: nil, keyPath: "", value: nil, reason: "not UTF-8 text")
        }
        return try parse(text, source: path)
    }

    /// Decodes a configuration from YAML text.
    ///
    /// First the document's shape is checked key by key (unknown keys, with the nearest known one
    /// when it is close; a key given twice; keys that are not text), recording each key's line;
    /// then `Codable` decodes the values, and a value of the wrong type is reported at its key
    /// path and line. Values are checked further by `apply(to:)`. An empty document sets nothing.
    /// - Parameter source: the file's name, for errors.
    /// - Throws: `ConfigFileError`.
    public static func parse(_ text: String, source: String) throws(ConfigFileError) -> ConfigFile {
        // Before the parser, whose recursion a deeply nested text would overflow (a crash).
        if let line = YAMLNestingBound.measure(text).line {
            throw ConfigFileError(
                source: source, line: line, keyPath: "", value: nil,
                reason: "nested too deeply: more than \(YAMLNestingBound.limit) levels of collections (counting every '[' and '{' and each line's indentation); a configuration is a few levels deep")
        }
        let root: Node?
        do { root = try Yams.compose(yaml: text) } catch {
            throw syntaxError(error, source: source)
        }
        guard let root else {
            var empty = ConfigFile()
            empty.source = source
            return empty
        }
        var shape = Shape(source: source)
        try shape.check(root: root)
        var file: ConfigFile
        do {
            file = try YAMLDecoder().decode(ConfigFile.self, from: text)
        } catch let error as DecodingError {
            throw shape.describe(error)
        } catch {
            throw ConfigFileError(source: source, line: nil, keyPath: "", value: nil, reason: "\(error)")
        }
        file.source = source
        file.lines = shape.lines
        return file
    }

    /// The parser's complaint, at its line: `statsrelay.yaml:3: not valid YAML: mapping values
    /// are not allowed in this context`.
    static func syntaxError(_ error: any Error, source: String) -> ConfigFileError {
        switch error as? YamlError {
        case .scanner(_, let problem, let mark, _)?, .parser(_, let problem, let mark, _)?, .composer(_, let problem, let mark, _)?:
            return ConfigFileError(source: source, line: mark.line, keyPath: "", value: nil, reason: "not valid YAML: \(problem)")
        case .reader(let problem, _, _, _)?:
            return ConfigFileError(source: source, line: nil, keyPath: "", value: nil, reason: "not valid YAML: \(problem)")
        default:
            return ConfigFileError(source: source, line: nil, keyPath: "", value: nil, reason: "not valid YAML: \(error)")
        }
    }

    /// The document's keys as checked before decoding: the line of each key path, and the text of
    /// each value, to name them in errors.
    struct Shape {
        let source: String
        /// Line of each key path (`port`, `backends[1]`, `backends[1].label`).
        var lines: [String: Int] = [:]
        /// Each value as written, compactly (`[1, 2]`, `{a: 1}`), by key path.
        var values: [String: String] = [:]

        init(source: String) { self.source = source }

        func error(_ path: String, line: Int?, value: String? = nil, _ reason: String) -> ConfigFileError {
            ConfigFileError(source: source, line: line, keyPath: path, value: value, reason: reason)
        }

        mutating func check(root: Node) throws(ConfigFileError) {
            guard let mapping = root.mapping else {
                throw error("", line: root.mark?.line, value: Self.text(of: root), "expected a mapping of keys to values (key: value), one key per option")
            }
            try checkKeys(of: mapping, prefix: "", known: ConfigFile.keys.map(\.name))
            for (key, value) in mapping {
                guard let name = key.string, name == "listeners" || name == "backends", let list = value.sequence else { continue }
                let entryKeys = name == "listeners" ? ConfigFile.listenerKeys : ConfigFile.backendKeys
                for (index, entry) in list.enumerated() {
                    let path = "\(name)[\(index)]"
                    record(path, entry)
                    if let entryMapping = entry.mapping {
                        try checkKeys(of: entryMapping, prefix: path + ".", known: entryKeys)
                    }
                }
            }
        }

        /// Refuses a key that is not text, not known (naming the nearest known one when it is
        /// close) or given twice; records the line and value of each.
        private mutating func checkKeys(of mapping: Node.Mapping, prefix: String, known: [String]) throws(ConfigFileError) {
            var seen: [String: Int] = [:]
            for (key, value) in mapping {
                let line = key.mark?.line
                guard let name = key.scalar?.string else {
                    throw error(prefix.isEmpty ? "" : String(prefix.dropLast()), line: line, value: Self.text(of: key), "a key must be text")
                }
                guard known.contains(name) else {
                    let hint = ConfigFile.suggestion(for: name, among: known).map { " (did you mean '\($0)'?)" } ?? ""
                    let help = prefix.isEmpty
                        ? "the keys are the long options' names: see docs/configuration.md"
                        : "an entry's keys are \(known.joined(separator: ", "))"
                    throw error(prefix + name, line: line, "unknown key\(hint); \(help)")
                }
                if let first = seen[name] {
                    throw error(prefix + name, line: line, "given twice (first on line \(first)): give each key once")
                }
                seen[name] = line ?? 0
                lines[prefix + name] = line
                values[prefix + name] = Self.text(of: value)
                try checkBaseSixty(value, path: prefix + name)
            }
        }

        /// Refuses a plain scalar that YAML 1.1 reads as a base-60 number (digits separated by
        /// `:`, `1:30` is 90) too large for an integer: the decoder (Yams) would trap on the
        /// overflow and end the relay, at start or at a reload, instead of naming the value.
        private func checkBaseSixty(_ node: Node, path: String) throws(ConfigFileError) {
            switch node {
            case .scalar(let scalar):
                guard scalar.style == .plain || scalar.style == .any, scalar.string.contains(":"),
                    Self.baseSixtyOverflows(scalar.string)
                else { return }
                throw error(
                    path, line: node.mark?.line, value: Self.text(of: node),
                    "a number too large: YAML reads digits separated by ':' as one base-60 number (1:30 is 90); quote the value if it is text")
            case .sequence(let sequence):
                for (index, entry) in sequence.enumerated() { try checkBaseSixty(entry, path: "\(path)[\(index)]") }
            case .mapping(let mapping):
                for (key, value) in mapping { try checkBaseSixty(value, path: "\(path).\(key.string ?? "?")") }
            }
        }

        /// Whether `text`, read as Yams reads a base-60 integer (underscores dropped, a sign,
        /// then each `:`-separated part that is a number, least significant last), overflows `Int`.
        static func baseSixtyOverflows(_ text: String) -> Bool {
            var digits = text.filter { $0 != "_" }
            if digits.hasPrefix("-") || digits.hasPrefix("+") { digits.removeFirst() }
            var base = 1
            var value = 0
            for part in digits.split(separator: ":", omittingEmptySubsequences: false).reversed() {
                guard let digit = Int(part) else { continue }
                let (product, productOverflow) = digit.multipliedReportingOverflow(by: base)
                let (sum, sumOverflow) = value.addingReportingOverflow(product)
                let (nextBase, baseOverflow) = base.multipliedReportingOverflow(by: 60)
                if productOverflow || sumOverflow || baseOverflow { return true }
                (value, base) = (sum, nextBase)
            }
            return false
        }

        private mutating func record(_ path: String, _ node: Node) {
            lines[path] = node.mark?.line
            values[path] = Self.text(of: node)
        }

        /// A node as written, on one line: a scalar's text, `[a, b]`, `{k: v}`.
        static func text(of node: Node) -> String {
            switch node {
            case .scalar(let scalar): return scalar.string
            case .sequence(let sequence): return "[" + sequence.map { text(of: $0) }.joined(separator: ", ") + "]"
            case .mapping(let mapping): return "{" + mapping.map { "\(text(of: $0.key)): \(text(of: $0.value))" }.joined(separator: ", ") + "}"
            @unknown default: return "?"
            }
        }

        /// The key path of a decoder's coding path: `backends[1].health-check-port`.
        static func path(_ codingPath: [any CodingKey]) -> String {
            var path = ""
            for key in codingPath {
                if let index = key.intValue {
                    path += "[\(index)]"
                } else {
                    path += path.isEmpty ? key.stringValue : ".\(key.stringValue)"
                }
            }
            return path
        }

        /// A decoding error as the operator needs it: key path, line, value, what was expected.
        func describe(_ decoding: DecodingError) -> ConfigFileError {
            switch decoding {
            case .typeMismatch(let type, let context):
                let path = Self.path(context.codingPath)
                return error(path, line: lines[path], value: values[path], Self.expectation(type, at: path))
            case .valueNotFound(let type, let context):
                let path = Self.path(context.codingPath)
                return error(path, line: lines[path], value: values[path], Self.expectation(type, at: path))
            case .keyNotFound(let key, let context):
                let path = Self.path(context.codingPath)
                let what = path.hasPrefix("backends") ? "a backend written as a mapping needs its address" : "required"
                return error(path, line: lines[path], "missing key '\(key.stringValue)': \(what)")
            case .dataCorrupted(let context):
                let path = Self.path(context.codingPath)
                return error(path, line: lines[path], value: values[path], context.debugDescription)
            @unknown default:
                return error("", line: nil, "\(decoding)")
            }
        }

        /// The keys whose values are integers or booleans (the others are text, or lists).
        static let integerKeys: Set<String> = [
            "port", "packet-len", "max-datagram", "receive-buffers", "threads", "health-check-port", "health-rise", "health-fall",
        ]

        /// What the value at `path` looks like, for a wrong one of `type` (the type Yams wanted:
        /// the field's, or a node kind when the value is a list or mapping where a single value
        /// belongs, or the reverse).
        static func expectation(_ type: Any.Type, at path: String) -> String {
            let key = String(path.split(separator: ".").last ?? "")
            if path.hasPrefix("backends["), !path.contains(".") {
                return "expected HOST:PORT[:INSTANCE] or a mapping of address, label and health-check-port"
            }
            if path.hasPrefix("listeners["), !path.contains(".") {
                return "expected ADDR:PORT, unix:PATH, or a mapping of bind and port (or unix and mode)"
            }
            switch type {
            case is Int.Type: return "expected an integer"
            case is Bool.Type: return "expected true or false"
            case is Node.Sequence.Type: return "expected a list"
            case is Node.Mapping.Type: return "expected a mapping of keys to values (key: value)"
            default:
                if integerKeys.contains(key) { return "expected an integer" }
                if key == "reuseport-group" { return "expected true or false" }
                return "expected a single value (text or a number)"
            }
        }
    }
}
