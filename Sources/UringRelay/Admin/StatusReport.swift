/// The table `statsrelay status` prints, made from the relay's own `/metrics`: one line of
/// facts (health, io driver, ring), one row per backend (state, since when, lines sent and per
/// second, dropped, unconfirmed, held), a total row, then the input and where lines were lost.
public struct StatusReport: Sendable {
    /// The samples of the last scrape.
    public var samples: [PrometheusSample]
    /// The samples of a scrape `interval` seconds before, for rates; `nil` for none.
    public var earlier: [PrometheusSample]?
    /// Seconds between the two scrapes.
    public var interval: Double
    /// `/healthz`'s answer: whether it was 200, and its one line.
    public var health: (healthy: Bool, reason: String)
    /// Where the endpoint was reached, e.g. `127.0.0.1:8127`.
    public var address: String
    /// The wall-clock time of the last scrape (Unix seconds), to say how long states have lasted.
    public var unixNow: Double

    /// A report of these scrapes.
    public init(
        samples: [PrometheusSample], earlier: [PrometheusSample]? = nil, interval: Double = 0,
        health: (healthy: Bool, reason: String), address: String, unixNow: Double
    ) {
        self.samples = samples
        self.earlier = earlier
        self.interval = interval
        self.health = health
        self.address = address
        self.unixNow = unixNow
    }

    /// The report as text, ending in a newline.
    public func render() -> String {
        var lines: [String] = []
        let version = first("statsrelay_build_info")?.labels["version"] ?? "?"
        lines.append("statsrelay \(version) at \(address): \(health.healthy ? "healthy" : "UNHEALTHY") (\(health.reason))")
        let driver = first("statsrelay_io_driver_info")?.labels["driver"] ?? "?"
        let ring = first("statsrelay_ring_fingerprint_info")
        let backends = all("statsrelay_backend_up").compactMap { $0.labels["backend"] }
        lines.append(
            "io driver \(driver), \(integer(sum("statsrelay_workers"))) workers; ring of \(backends.count) backend"
                + "\(backends.count == 1 ? "" : "s"), hash \(ring?.labels["hash_mode"] ?? "?"), fingerprint \(ring?.labels["fingerprint"] ?? "?")")
        if sum("statsrelay_failing_open") > 0 {
            lines.append("FAILING OPEN: every backend is down; each line goes to its primary")
        }
        lines.append("")

        // Backends in the pool first (in routing order), then any that left it but have counts.
        var rows = backends
        for sample in all("statsrelay_backend_lines_sent_total") {
            if let backend = sample.labels["backend"], !rows.contains(backend) { rows.append(backend) }
        }
        var table: [[String]] = [["BACKEND", "STATE", "SINCE", "LINES SENT", "LINES/S", "DROPPED", "DOUBTED", "HELD"]]
        for backend in rows {
            let labels = ["backend": backend]
            let up = first("statsrelay_backend_up", labels)
            // A down backend held by flap damping says so: it will not come back at its next check.
            let flaps = first("statsrelay_backend_flap_holds_total", labels).map { Self.saturating($0.value) } ?? 0
            let down = flaps > 0 ? "DOWN (flapping: \(flaps) hold\(flaps == 1 ? "" : "s"))" : "DOWN"
            let state = up.map { $0.value == 1 ? "up" : down } ?? "removed"
            let since = first("statsrelay_backend_state_since_timestamp_seconds", labels).map { Self.duration(unixNow - $0.value) } ?? "-"
            table.append([
                backend, state, since,
                integer(sum("statsrelay_backend_lines_sent_total", labels)),
                rate("statsrelay_backend_lines_sent_total", labels),
                integer(sum("statsrelay_backend_lines_dropped_total", labels)),
                integer(sum("statsrelay_backend_lines_doubted_total", labels)),
                integer(sum("statsrelay_backend_lines_held_total", labels)),
            ])
        }
        table.append([
            "total", "", "",
            integer(sum("statsrelay_backend_lines_sent_total")), rate("statsrelay_backend_lines_sent_total"),
            integer(sum("statsrelay_backend_lines_dropped_total")), integer(sum("statsrelay_backend_lines_doubted_total")),
            integer(sum("statsrelay_backend_lines_held_total")),
        ])
        lines += Self.columns(table)
        lines.append("")

        lines.append(
            "received: \(integer(sum("statsrelay_datagrams_received_total"))) datagrams, "
                + "\(integer(sum("statsrelay_lines_received_total"))) lines (\(rate("statsrelay_lines_received_total"))/s); "
                + "forwarded \(integer(sum("statsrelay_lines_forwarded_total"))) lines")
        lines.append("lines dropped: \(breakdown("statsrelay_lines_dropped_total"))")
        lines.append("datagrams dropped: \(breakdown("statsrelay_datagrams_dropped_total"))")
        lines.append(
            "held: \(bytes(sum("statsrelay_hold_in_use_bytes"))) of \(bytes(sum("statsrelay_hold_limit_bytes"))) in use; "
                + "unconfirmed at exit so far: \(integer(sum("statsrelay_lines_unconfirmed_at_exit_total")))")
        let loaded = first("statsrelay_config_last_reload_success_timestamp_seconds").map { Self.duration(unixNow - $0.value) } ?? "-"
        let lastFailed = first("statsrelay_config_last_reload_successful").map { $0.value == 0 } ?? false
        lines.append(
            "configuration: in force for \(loaded); reloads: \(integer(sum("statsrelay_config_reloads_total", ["result": "success"]))) "
                + "succeeded, \(integer(sum("statsrelay_config_reloads_total", ["result": "failure"]))) failed"
                + (lastFailed ? "; THE LAST RELOAD FAILED (the log says why)" : ""))
        return lines.joined(separator: "\n") + "\n"
    }

    private func all(_ name: String, _ labels: [String: String] = [:], in samples: [PrometheusSample]? = nil) -> [PrometheusSample] {
        (samples ?? self.samples).filter { sample in
            sample.name == name && labels.allSatisfy { sample.labels[$0.key] == $0.value }
        }
    }

    private func first(_ name: String, _ labels: [String: String] = [:]) -> PrometheusSample? { all(name, labels).first }

    private func sum(_ name: String, _ labels: [String: String] = [:], in samples: [PrometheusSample]? = nil) -> Double {
        all(name, labels, in: samples).reduce(0) { $0 + $1.value }
    }

    /// The per-second increase between the two scrapes, or `-` with only one.
    private func rate(_ name: String, _ labels: [String: String] = [:]) -> String {
        guard let earlier, interval > 0 else { return "-" }
        let increase = max(0, sum(name, labels) - sum(name, labels, in: earlier))
        let perSecond = increase / interval
        return perSecond >= 100 ? integer(perSecond) : "\((perSecond * 10).rounded(.towardZero) / 10)"
    }

    /// `none`, or the non-zero samples by reason: `missing_colon 70, kernel 8`.
    private func breakdown(_ name: String) -> String {
        var byReason: [(String, Double)] = []
        for sample in all(name) where sample.value > 0 {
            let reason = sample.labels["reason"] ?? "?"
            if let index = byReason.firstIndex(where: { $0.0 == reason }) { byReason[index].1 += sample.value } else { byReason.append((reason, sample.value)) }
        }
        return byReason.isEmpty ? "none" : byReason.map { "\($0.0) \(integer($0.1))" }.joined(separator: ", ")
    }

    /// A count as an integer; one beyond `Int64` (a counter past 2^63, `1e308`) or not finite
    /// as the float it is (`1.8446744073709552e+19`, `inf`), never a trap.
    private func integer(_ value: Double) -> String {
        let rounded = value.rounded()
        return rounded.isFinite && abs(rounded) < 0x1p63 ? "\(Int64(rounded))" : "\(value)"
    }

    /// `value` toward zero as an `Int64`, saturated at `Int64.min` and `Int64.max`; 0 for NaN.
    /// What another server's `/metrics` says is not trusted to fit.
    static func saturating(_ value: Double) -> Int64 {
        if value.isNaN { return 0 }
        if value >= 0x1p63 { return .max }
        if value < -0x1p63 { return .min }
        return Int64(value)
    }

    private func bytes(_ value: Double) -> String {
        let units = ["B", "KiB", "MiB", "GiB"]
        var scaled = value
        var unit = 0
        while scaled >= 1024, unit < units.count - 1 {
            scaled /= 1024
            unit += 1
        }
        return unit == 0 ? "\(integer(scaled.rounded(.towardZero))) B" : "\((scaled * 10).rounded(.towardZero) / 10) \(units[unit])"
    }

    /// Seconds as the two largest units: `45s`, `3m12s`, `2h13m`, `4d06h` (0 for a negative or
    /// NaN span; saturated at `Int64.max` seconds).
    static func duration(_ seconds: Double) -> String {
        let total = max(0, saturating(seconds))
        let (days, hours, minutes, secs) = (total / 86_400, total / 3_600 % 24, total / 60 % 60, total % 60)
        func two(_ value: Int64) -> String { value < 10 ? "0\(value)" : "\(value)" }
        if days > 0 { return "\(days)d\(two(hours))h" }
        if hours > 0 { return "\(hours)h\(two(minutes))m" }
        if minutes > 0 { return "\(minutes)m\(two(secs))s" }
        return "\(secs)s"
    }

    /// Rows as left-aligned columns two spaces apart.
    static func columns(_ rows: [[String]]) -> [String] {
        guard let width = rows.map(\.count).max() else { return [] }
        let widths = (0..<width).map { column in rows.map { column < $0.count ? $0[column].count : 0 }.max() ?? 0 }
        return rows.map { row in
            row.enumerated().map { column, cell in
                column == row.count - 1 ? cell : cell + String(repeating: " ", count: widths[column] - cell.count)
            }.joined(separator: "  ")
        }
    }
}
