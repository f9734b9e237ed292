/// Renders a `RelaySnapshot` in the Prometheus text exposition format (version 0.0.4), the body
/// of `GET /metrics`: every family of `MetricFamily.all`, each with its `# HELP` and `# TYPE`
/// lines, then its samples.
///
/// ```
/// # HELP statsrelay_lines_dropped_total Lines not delivered, by reason: …
/// # TYPE statsrelay_lines_dropped_total counter
/// statsrelay_lines_dropped_total{reason="missing_colon"} 3
///                               ^^^^^^^^^^^^^^^^^^^^^^^^ label values escaped: \\ \" \n
/// ```
public enum PrometheusExposition {
    /// The `Content-Type` of the exposition.
    public static let contentType = "text/plain; version=0.0.4; charset=utf-8"

    /// The exposition of `snapshot`.
    ///
    /// A counter whose family is missing from `families` (a counter added or renamed without a
    /// HELP line in the table) is still exported, after the others, with a HELP line saying so.
    public static func render(_ snapshot: RelaySnapshot, families: [MetricFamily] = MetricFamily.all) -> String {
        var text = ""
        text.reserveCapacity(16_384)
        for family in families + undeclaredCounterFamilies(declared: families) {
            text += "# HELP \(family.name) \(escapeHelp(family.help))\n"
            text += "# TYPE \(family.name) \(family.kind.rawValue)\n"
            for sample in samples(of: family, in: snapshot) {
                text += family.name
                if !sample.labels.isEmpty {
                    text += "{"
                    text += sample.labels.map { "\($0.name)=\"\(escapeLabelValue($0.value))\"" }.joined(separator: ",")
                    text += "}"
                }
                text += " \(sample.value)\n"
            }
        }
        return text
    }

    /// A label value as the format writes it between quotes: `\` as `\\`, `"` as `\"`, a line
    /// feed as `\n`.
    public static func escapeLabelValue(_ value: String) -> String {
        var escaped = ""
        escaped.reserveCapacity(value.utf8.count)
        for character in value.unicodeScalars {
            switch character {
            case "\\": escaped += "\\\\"
            case "\"": escaped += "\\\""
            case "\n": escaped += "\\n"
            default: escaped.unicodeScalars.append(character)
            }
        }
        return escaped
    }

    /// A HELP text as the format writes it: `\` as `\\`, a line feed as `\n`.
    public static func escapeHelp(_ help: String) -> String {
        var escaped = ""
        for character in help.unicodeScalars {
            switch character {
            case "\\": escaped += "\\\\"
            case "\n": escaped += "\\n"
            default: escaped.unicodeScalars.append(character)
            }
        }
        return escaped
    }

    /// A float as the format writes it (`NaN`, `+Inf` and `-Inf` for the non-finite ones).
    public static func format(_ value: Double) -> String {
        if value.isNaN { return "NaN" }
        if value.isInfinite { return value > 0 ? "+Inf" : "-Inf" }
        return "\(value)"
    }

    /// One line of a family: its labels in the family's order, and its value as written.
    struct Sample {
        var labels: [(name: String, value: String)]
        var value: String
    }

    /// Counter families the counter tables produce that `declared` lacks.
    static func undeclaredCounterFamilies(declared: [MetricFamily]) -> [MetricFamily] {
        let names = Set(declared.map(\.name))
        var missing: [MetricFamily] = []
        var seen: Set<String> = []
        for counter in RelayCounter.allCases {
            let (family, reason) = counter.exposition
            guard !names.contains(family), seen.insert(family).inserted else { continue }
            missing.append(MetricFamily(
                family, .counter, reason == nil ? [] : ["reason"], .relayCounters,
                help: "The relay's counter \(counter.name) (no HELP declared in MetricFamily.all)."))
        }
        for counter in BackendCounter.allCases {
            let (family, reason) = counter.exposition
            guard !names.contains(family), seen.insert(family).inserted else { continue }
            missing.append(MetricFamily(
                family, .counter, reason == nil ? ["backend"] : ["backend", "reason"], .backendCounters,
                help: "The backend counter \(counter.name) (no HELP declared in MetricFamily.all)."))
        }
        for counter in MirrorBackendCounter.allCases {
            let (family, reason) = counter.exposition
            guard !names.contains(family), seen.insert(family).inserted else { continue }
            missing.append(MetricFamily(
                family, .counter, reason == nil ? ["backend"] : ["backend", "reason"], .mirrorBackendCounters,
                help: "The mirror backend counter \(counter.name) (no HELP declared in MetricFamily.all)."))
        }
        return missing
    }

    /// The relay counters exported under each family, with their `reason` label, in table order.
    private static let relayCountersByFamily = byFamily(RelayCounter.allCases, \.exposition)
    /// The backend counters exported under each family, with their `reason` label, in table order.
    private static let backendCountersByFamily = byFamily(BackendCounter.allCases, \.exposition)
    /// The mirror backend counters exported under each family, with their `reason` label, in table order.
    private static let mirrorBackendCountersByFamily = byFamily(MirrorBackendCounter.allCases, \.exposition)

    /// `counters` grouped by the family they are exported under, each with its `reason` label,
    /// in the order given: what a family's samples need, worked out once instead of per sample.
    private static func byFamily<Counter: Sendable>(
        _ counters: [Counter], _ exposition: (Counter) -> (family: String, reason: String?)
    ) -> [String: [(counter: Counter, reason: String?)]] {
        var table: [String: [(counter: Counter, reason: String?)]] = [:]
        for counter in counters {
            let (family, reason) = exposition(counter)
            table[family, default: []].append((counter, reason))
        }
        return table
    }

    /// The samples of one family.
    static func samples(of family: MetricFamily, in snapshot: RelaySnapshot) -> [Sample] {
        /// The family's labels that `values` names, in the family's order.
        func labels(_ values: [String: String]) -> [(name: String, value: String)] {
            family.labels.compactMap { name in values[name].map { (name, $0) } }
        }
        func one(_ value: String, _ values: [String: String] = [:]) -> [Sample] {
            [Sample(labels: labels(values), value: value)]
        }
        switch family.source {
        case .relayCounters:
            // The received families and the kernel's drops are counted per listener. The other
            // drop reasons are not split by listener and carry no `listener` label: a label
            // naming the listeners in force would rename their series (and break `rate()`)
            // whenever a reload adds or removes a listener.
            var samples: [Sample] = []
            for (counter, reason) in relayCountersByFamily[family.name] ?? [] {
                var values: [String: String] = [:]
                if let reason { values["reason"] = reason }
                guard let split = ListenerCounter.split(of: counter) else {
                    samples.append(Sample(labels: labels(values), value: "\(snapshot.counters[counter])"))
                    continue
                }
                // A TCP family is counted for the TCP listeners only, the others for every one.
                func counts(_ name: String) -> Bool { !split.isTCP || name.hasPrefix("tcp:") }
                if !snapshot.counters.listeners.isEmpty {
                    for name in snapshot.counters.listeners where counts(name) {
                        values["listener"] = name
                        samples.append(Sample(labels: labels(values), value: "\(snapshot.counters[split, listener: name])"))
                    }
                    continue
                }
                // No worker has counted by listener yet (the first moments after a start): the
                // total goes under the listeners in force the family counts, each its own series
                // as the workers will show it, not under a label no later scrape repeats.
                let total = snapshot.counters[counter]
                let names = snapshot.listeners.filter(counts)
                if names.count == 1 || total == 0 {
                    for name in names {
                        values["listener"] = name
                        samples.append(Sample(labels: labels(values), value: "\(total)"))
                    }
                } else {
                    // Counts that cannot be split (none known to be taken yet): under them all.
                    values["listener"] = (names.isEmpty ? snapshot.listeners : names).joined(separator: ",")
                    samples.append(Sample(labels: labels(values), value: "\(total)"))
                }
            }
            return samples
        case .backendCounters:
            // One column per counter of the family, each read in one pass over the backends
            // (current, then retired); a sample per backend and counter, backend by backend.
            let members = backendCountersByFamily[family.name] ?? []
            let columns = members.map { snapshot.counters.values(of: $0.counter) }
            guard let rows = columns.first?.indices else { return [] }
            var samples: [Sample] = []
            samples.reserveCapacity(rows.count * members.count)
            for row in rows {
                for (column, member) in zip(columns, members) {
                    var values = ["backend": column[row].backend]
                    if let reason = member.reason { values["reason"] = reason }
                    samples.append(Sample(labels: labels(values), value: "\(column[row].value)"))
                }
            }
            return samples
        case .mirrorBackendCounters:
            let members = mirrorBackendCountersByFamily[family.name] ?? []
            var samples: [Sample] = []
            for (index, backend) in snapshot.counters.mirrorBackends.enumerated() {
                for (counter, reason) in members {
                    var values = ["backend": backend]
                    if let reason { values["reason"] = reason }
                    samples.append(Sample(labels: labels(values), value: "\(snapshot.counters[counter, mirror: index])"))
                }
            }
            return samples
        case .backendUp:
            return snapshot.backends.flatMap { one($0.up ? "1" : "0", ["backend": $0.identity]) }
        case .backendStateChanges:
            return snapshot.backends.flatMap { one("\($0.stateChanges)", ["backend": $0.identity]) }
        case .backendFlapHolds:
            return snapshot.backends.flatMap { one("\($0.flapHolds)", ["backend": $0.identity]) }
        case .backendStateSince:
            return snapshot.backends.flatMap { one(format($0.stateSinceUnixSeconds), ["backend": $0.identity]) }
        case .failOpenActivations:
            return one("\(snapshot.failOpenActivations)")
        case .failingOpen:
            return one(snapshot.failingOpen ? "1" : "0")
        case .holdInUseBytes:
            return one("\(snapshot.holdInUseBytes)")
        case .holdLimitBytes:
            return one("\(snapshot.holdLimitBytes)")
        case .ioDriver:
            return one("1", ["driver": snapshot.ioDriver])
        case .buildInfo:
            return one("1", ["version": snapshot.version])
        case .ringFingerprint:
            return one("1", ["fingerprint": snapshot.ringFingerprint, "hash_mode": snapshot.hashMode])
        case .workers:
            return one("\(snapshot.workerCounterAgesSeconds.count)")
        case .workerCountersAge:
            return snapshot.workerCounterAgesSeconds.enumerated().flatMap { one(format($1), ["worker": "\($0)"]) }
        case .logWriteErrors:
            return one("\(snapshot.logWriteErrors)")
        case .startTime:
            return one(format(snapshot.startTimeUnixSeconds))
        case .configReloads:
            return one("\(snapshot.configReloadsSucceeded)", ["result": "success"])
                + one("\(snapshot.configReloadsFailed)", ["result": "failure"])
        case .configLastReloadSuccessful:
            return one(snapshot.configLastReloadSuccessful ? "1" : "0")
        case .configLastReloadSuccessTime:
            return one(format(snapshot.configLastReloadSuccessUnixSeconds))
        case .tcpConnectionsOpen:
            let counters = snapshot.counters
            return counters.listeners.filter { $0.hasPrefix("tcp:") }.flatMap { name in
                let closed = ListenerCounter.tcpCloseReasons.reduce(UInt64(0)) { $0 &+ counters[$1, listener: name] }
                return one("\(counters[.tcpConnectionsAccepted, listener: name] &- closed)", ["listener": name])
            }
        }
    }
}
