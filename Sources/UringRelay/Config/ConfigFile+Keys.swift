extension ConfigFile {
    /// What a SIGHUP does with a key whose value changed in the file.
    public enum Reload: String, Sendable, CaseIterable {
        /// Applied at once: listeners, backends, down-policy, packet length, flush interval,
        /// health checks, name refresh, log level.
        case applied
        /// Kept (and logged): the workers take it only when they start (their control channel
        /// does not carry it yet: the stop budget). The file's value applies at the
        /// next start.
        case atNextStart = "at-next-start"
        /// Kept (and logged): fixed for the life of the process (threads and their CPUs, rings and
        /// buffers sized at start, the io driver, the admin endpoint). The file's value applies at
        /// the next start.
        case restart
    }

    /// One top-level key of the file: its name (the long option's, without `--`) and what a
    /// reload does with it.
    public struct Key: Sendable, Equatable {
        /// The key, e.g. `packet-len`.
        public var name: String
        /// What a SIGHUP does when its value changed.
        public var reload: Reload

        init(_ name: String, _ reload: Reload) {
            self.name = name
            self.reload = reload
        }

        /// The command-line option that overrides it (`--packet-len`); `backends` are the
        /// positional arguments.
        public var flag: String { name == "backends" ? "BACKEND…" : "--\(name)" }
    }

    /// Every top-level key, in the order `render` writes them. `bind` and `port` are the
    /// one-listener shorthand of `listeners`.
    public static let keys: [Key] = [
        Key("listeners", .applied),
        Key("bind", .applied),
        Key("port", .applied),
        Key("backends", .applied),
        Key("packet-len", .applied),
        Key("flush-interval", .applied),
        Key("shutdown-timeout", .atNextStart),
        Key("rcvbuf", .restart),
        Key("max-datagram", .restart),
        Key("receive-buffers", .restart),
        Key("min-wait", .restart),
        Key("threads", .restart),
        Key("cpus", .restart),
        Key("io-backend", .restart),
        Key("hash", .restart),
        Key("reuseport-group", .restart),
        Key("reuseport-steering", .restart),
        Key("health-check", .applied),
        Key("health-check-port", .applied),
        Key("health-interval", .applied),
        Key("health-timeout", .applied),
        Key("health-rise", .applied),
        Key("health-fall", .applied),
        Key("on-backend-down", .applied),
        Key("hold-bytes", .restart),
        Key("replay-rate", .restart),
        Key("dns-refresh", .applied),
        Key("admin", .restart),
        Key("control-socket", .restart),
        Key("log-level", .applied),
        Key("prefix", .restart),
        Key("self-metrics-interval", .restart),
        Key("log-format", .restart),
        Key("stop-delay", .applied),
        Key("flap-hold-max", .applied),
        Key("flap-hold", .applied),
        Key("validate", .restart),
        Key("hash-key", .restart),
        Key("metrics-prefix", .restart),
        Key("metrics-tags", .restart),
        Key("sendproto", .restart),
        Key("tcp-backend-queue", .restart),
        Key("tcp-port", .restart),
        Key("tcp-max-connections", .restart),
        Key("tcp-idle-timeout", .restart),
        Key("mirror", .restart),
        Key("mirror-hash", .restart),
        Key("mirror-sample", .restart),
    ]

    /// The keys of one entry of `listeners` written as a mapping.
    public static let listenerKeys = ["bind", "port", "unix", "mode", "tcp"]

    /// The keys of one entry of `backends` written as a mapping.
    public static let backendKeys = ["address", "label", "health-check-port"]

    /// The key named `name`, if the file may have it at the top level.
    public static func key(named name: String) -> Key? { keys.first { $0.name == name } }

    /// The known key closest to `unknown`, when it is close enough to be a likely misspelling:
    /// the same words in another spelling (`packet_len`, `packetlen`, `PacketLen`), the only key
    /// holding all its words (`health-port` → `health-check-port`), or at most a third of its
    /// letters edited (Levenshtein distance).
    public static func suggestion(for unknown: String, among known: [String]) -> String? {
        func folded(_ text: String) -> String { String(text.lowercased().filter { $0.isLetter || $0.isNumber }) }
        if let same = known.first(where: { folded($0) == folded(unknown) }) { return same }
        func words(_ text: String) -> Set<String> {
            Set(text.lowercased().split { !($0.isLetter || $0.isNumber) }.map(String.init))
        }
        let unknownWords = words(unknown)
        let holding = known.filter { unknownWords.count > 1 && unknownWords.isSubset(of: words($0)) }
        if holding.count == 1 { return holding[0] }
        let scored = known.map { ($0, editDistance(unknown.lowercased(), $0)) }
        guard let best = scored.min(by: { $0.1 < $1.1 }) else { return nil }
        return best.1 <= max(1, max(unknown.count, best.0.count) / 3) ? best.0 : nil
    }

    /// The Levenshtein distance between `a` and `b`: the fewest single-character insertions,
    /// deletions and substitutions that turn one into the other.
    static func editDistance(_ a: String, _ b: String) -> Int {
        let a = Array(a), b = Array(b)
        if a.isEmpty { return b.count }
        var previous = Array(0...b.count)
        for i in 1...a.count {
            var current = [i] + Array(repeating: 0, count: b.count)
            for j in stride(from: 1, through: b.count, by: 1) {
                current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
            }
            previous = current
        }
        return previous[b.count]
    }
}
