/// One family of the Prometheus exposition (`GET /metrics`): its name, type, HELP text, labels
/// and where its samples come from, declared in one table (`all`) beside the counter tables.
///
/// Counter families are not named here by hand for each counter: a `RelayCounter` or
/// `BackendCounter` is exported under the name its dot name gives (`exposition(ofCounterNamed:)`),
/// so a renamed counter moves with its table. `all` only adds the HELP text and the labels of
/// each family those names produce; a test checks that every counter's family has one.
public struct MetricFamily: Sendable, Equatable {
    /// The Prometheus metric type.
    public enum Kind: String, Sendable {
        case counter, gauge
    }

    /// Where a family's samples come from.
    public enum Source: Sendable, Equatable {
        /// The `RelayCounter`s whose exposition family is this one.
        case relayCounters
        /// The `BackendCounter`s whose exposition family is this one, one sample per backend.
        case backendCounters
        /// 1 while the health view has the backend up, 0 while down.
        case backendUp
        /// How many times the backend went down or came back.
        case backendStateChanges
        case backendFlapHolds
        /// When the backend's current state began.
        case backendStateSince
        /// Times every backend was down and the relay failed open.
        case failOpenActivations
        /// 1 while the relay fails open.
        case failingOpen
        /// Bytes of hold memory taken.
        case holdInUseBytes
        /// The hold bound (`--hold-bytes`).
        case holdLimitBytes
        /// The io driver in use, as a label.
        case ioDriver
        /// The version, as a label.
        case buildInfo
        /// The ring fingerprint and hash mode, as labels.
        case ringFingerprint
        /// Workers started.
        case workers
        /// Age of each worker's last counter publication.
        case workerCountersAge
        /// Log lines dropped because stderr could not take them.
        case logWriteErrors
        /// When the relay started.
        case startTime
        /// Configuration reloads by result.
        case configReloads
        /// Whether the last reload succeeded.
        case configLastReloadSuccessful
        /// When the configuration in force was loaded.
        case configLastReloadSuccessTime
        /// The `MirrorBackendCounter`s whose exposition family is this one, one sample per
        /// mirror backend.
        case mirrorBackendCounters
        /// TCP ingest connections open, per TCP listener (accepted less closed).
        case tcpConnectionsOpen
    }

    /// The family's name, `statsrelay_…`.
    public var name: String
    /// Counter or gauge.
    public var kind: Kind
    /// The HELP text: what one sample means.
    public var help: String
    /// The label names its samples carry, in order (a sample may lack one: in
    /// `statsrelay_datagrams_dropped_total` only `reason="kernel"` has a `listener`).
    public var labels: [String]
    /// Where the samples come from.
    public var source: Source

    /// A family of the table.
    public init(_ name: String, _ kind: Kind, _ labels: [String] = [], _ source: Source, help: String) {
        self.name = name
        self.kind = kind
        self.help = help
        self.labels = labels
        self.source = source
    }

    /// Every family the endpoint exports, in the order it exports them.
    ///
    /// Families the relay cannot fill are left out rather than exported empty. Input counts
    /// carry a `listener` label (`udp:…`, `unix:…`, `tcp:…`), one series per listener.
    public static let all: [MetricFamily] = [
        // Input.
        .init("statsrelay_datagrams_received_total", .counter, ["listener"], .relayCounters,
              help: "Datagrams received on a UDP or Unix listener, empty ones included; on a TCP listener, the runs of complete lines handed on (one per read, two when a read completes a held line)."),
        .init("statsrelay_bytes_received_total", .counter, ["listener"], .relayCounters,
              help: "Bytes received: datagram payloads; on a TCP listener, the bytes of complete lines."),
        .init("statsrelay_lines_received_total", .counter, ["listener"], .relayCounters,
              help: "StatsD lines received (each is forwarded, or dropped and counted by reason)."),
        .init("statsrelay_tcp_connections_accepted_total", .counter, ["listener"], .relayCounters,
              help: "TCP ingest connections accepted and kept open (those refused over --tcp-max-connections are not counted here)."),
        .init("statsrelay_tcp_connections_refused_total", .counter, ["listener"], .relayCounters,
              help: "TCP ingest connections accepted and reset at once because the worker already held its share of --tcp-max-connections."),
        .init("statsrelay_tcp_connections_closed_total", .counter, ["listener", "reason"], .relayCounters,
              help: "TCP ingest connections closed by the relay, by reason: peer (the client closed or reset it), idle (nothing received for --tcp-idle-timeout), too_long (a line longer than --max-datagram), error (a read failed), stop (the relay stopped or the listener was removed)."),
        .init("statsrelay_tcp_connections_open", .gauge, ["listener"], .tcpConnectionsOpen,
              help: "TCP ingest connections open now (accepted less closed)."),
        .init("statsrelay_tcp_accept_errors_total", .counter, [], .relayCounters,
              help: "accept(2) calls on a TCP listener that failed (out of descriptors: EMFILE, ENFILE; or a connection reset before it was taken); the connection stays in the kernel's queue or is gone."),
        .init("statsrelay_tcp_bytes_dropped_total", .counter, ["reason"], .relayCounters,
              help: "Bytes of TCP ingest input not relayed, by reason: partial (a line begun and not ended by its newline when the relay closed the connection: at a stop, for idle, or after a failed read; a client that closes its side has its last line relayed without a newline instead), too_long (what was read of a line longer than --max-datagram, and what followed it in the same read), unread (received by this host on a connection the relay closed, or refused over --tcp-max-connections, and never read: left in the socket or in the receive buffers when it closed)."),
        .init("statsrelay_tcp_receive_completions_total", .counter, [], .relayCounters,
              help: "io_uring driver: completions of the TCP ingest connections' multishot receives that carried bytes (one read each, of one buffer or a bundle of several); 0 on the portable driver, which reads TCP with recv(2) through epoll."),
        .init("statsrelay_tcp_receive_buffers_total", .counter, [], .relayCounters,
              help: "io_uring driver: buffers of the TCP receive group those completions filled (more than the completions where receive bundles take several buffers at once)."),
        .init("statsrelay_tcp_buffer_ring_exhausted_total", .counter, [], .relayCounters,
              help: "io_uring driver: times a TCP ingest connection's multishot receive ended because the TCP receive group had no free buffer (its bytes waited in the socket; the receive was armed again once its parked bytes were relayed)."),
        .init("statsrelay_lines_empty_total", .counter, [], .relayCounters,
              help: "Empty lines skipped."),
        .init("statsrelay_datagrams_dropped_total", .counter, ["listener", "reason"], .relayCounters,
              help: "Datagrams not relayed, by reason: truncated (larger than --max-datagram), bad_receive_header, at_exit (received but not relayed when the stop budget ran out), kernel (dropped by the kernel because the listening socket's receive queue was full). Only kernel is counted per listener (label listener); the other reasons have no listener label."),
        .init("statsrelay_listeners_closed_uncounted_total", .counter, [], .relayCounters,
              help: "Listening sockets a stop closed still holding datagrams it had no time to count (datagrams_dropped{reason=\"at_exit\"} is then short): 0 unless a receive buffer of hundreds of thousands of datagrams was full at the stop."),
        .init("statsrelay_lines_forwarded_total", .counter, [], .relayCounters,
              help: "Lines packed into a packet for a backend."),
        .init("statsrelay_lines_dropped_total", .counter, ["reason"], .relayCounters,
              help: "Lines not delivered, by reason: malformed (missing_colon, empty_name, nul_byte, too_long: over 65507 bytes, or over --max-datagram on a TCP ingest connection, which it closes; bad_event_header), too_long_rewritten (over 65507 bytes once --metrics-prefix/--metrics-tags are added), invalid under --validate strict (bad_name, bad_value, bad_type, bad_sample_rate, bad_timestamp, bad_service_check), no_send_buffer, the sums over backends of send_error, refused, unreachable, backend_down and hold_overflow, and held_at_exit, unsent_at_exit (packed but never handed to the kernel when the stop budget ran out), backend_removed, for TCP backends tcp_queue_full and tcp_unsent_at_exit, and for TCP ingest tcp_partial (a line begun without its newline on a connection the relay closed: at a stop, idle, or after a failed read)."),
        .init("statsrelay_lines_unconfirmed_at_exit_total", .counter, [], .relayCounters,
              help: "Lines the kernel took that a stop could not confirm as arrived: sent less than 200 ms before the exit, so a refusal could still have come, or, to a TCP backend, written and not acknowledged by its kernel when the connection was let go (the exit, a removed backend, an address change); all backends."),
        .init("statsrelay_lines_in_flight_at_exit_total", .counter, [], .relayCounters,
              help: "Lines in sends handed to the kernel whose completion never came before the stop budget ran out (their fate is unknown)."),
        .init("statsrelay_lines_doubted_total", .counter, [], .relayCounters,
              help: "Lines the kernel took and no refusal quoted, sent during an episode of ICMP errors the host may have rate-limited: maybe lost, all backends."),
        // Receive path.
        .init("statsrelay_buffer_ring_exhausted_total", .counter, [], .relayCounters,
              help: "Times the io_uring provided-buffer ring ran out of receive buffers (the kernel kept the datagrams; the receive was re-armed)."),
        .init("statsrelay_receive_rearms_total", .counter, [], .relayCounters,
              help: "Multishot receives re-armed (io_uring driver; every empty datagram ends one)."),
        .init("statsrelay_receive_errors_total", .counter, [], .relayCounters,
              help: "Receives that failed."),
        .init("statsrelay_submissions_deferred_total", .counter, [], .relayCounters,
              help: "Times io_uring's submission queue was full and the worker waited for completions before submitting more (io_uring driver; nothing is lost)."),
        // Output, summed over backends.
        .init("statsrelay_packets_sent_total", .counter, [], .relayCounters,
              help: "Packets the kernel took whole and no refusal came back for within 200 ms, all backends."),
        .init("statsrelay_send_errors_total", .counter, [], .relayCounters,
              help: "Packets the kernel did not take (the send failed), all backends."),
        // Dead backends and pool changes.
        .init("statsrelay_lines_rehashed_total", .counter, [], .relayCounters,
              help: "Lines of a down backend routed to a live one (--on-backend-down rehash)."),
        .init("statsrelay_lines_fail_open_total", .counter, [], .relayCounters,
              help: "Lines routed to their primary while every backend was down (failing open)."),
        .init("statsrelay_lines_held_total", .counter, [], .relayCounters,
              help: "Lines held for a down backend, or queued behind its replay (--on-backend-down hold)."),
        .init("statsrelay_lines_replayed_total", .counter, [], .relayCounters,
              help: "Held lines sent to a backend that came back."),
        .init("statsrelay_routing_updates_total", .counter, [], .relayCounters,
              help: "Pool publications (health view, addresses, backends) applied by the workers."),
        .init("statsrelay_pool_changes_total", .counter, [], .relayCounters,
              help: "Backend lists replaced, counted per worker."),
        .init("statsrelay_pool_changes_failed_total", .counter, [], .relayCounters,
              help: "Backend list changes a worker could not apply (the old pool stays; tried again a second later)."),
        // Per backend.
        .init("statsrelay_backend_lines_sent_total", .counter, ["backend"], .backendCounters,
              help: "Lines in packets the kernel took whole and no refusal came back for within 200 ms; to a TCP backend, lines its kernel acknowledged, and those lost at a reset."),
        .init("statsrelay_backend_packets_sent_total", .counter, ["backend"], .backendCounters,
              help: "Packets the kernel took whole and no refusal came back for within 200 ms."),
        .init("statsrelay_backend_bytes_sent_total", .counter, ["backend"], .backendCounters,
              help: "Bytes of the packets counted in statsrelay_backend_packets_sent_total."),
        .init("statsrelay_backend_send_errors_total", .counter, ["backend"], .backendCounters,
              help: "Packets the kernel did not take (the send failed; nothing was transmitted)."),
        .init("statsrelay_backend_send_retries_total", .counter, ["backend"], .backendCounters,
              help: "Sends met by an earlier packet's pending refusal (ECONNREFUSED, nothing transmitted) and sent once more: not a loss."),
        .init("statsrelay_backend_lines_dropped_total", .counter, ["backend", "reason"], .backendCounters,
              help: "The backend's lines not delivered, by reason: send_error (the send failed), refused (ICMP port unreachable), unreachable (another ICMP error), backend_down (--on-backend-down drop), hold_overflow (the hold bound was reached), tcp_queue_full (a TCP backend's --tcp-backend-queue had no room), tcp_unsent_at_exit (queued for a TCP backend, not written when the relay exited)."),
        .init("statsrelay_backend_packets_refused_total", .counter, ["backend"], .backendCounters,
              help: "Packets taken by the kernel, then refused by the backend's host (nothing listening on the port)."),
        .init("statsrelay_backend_lines_doubted_total", .counter, ["backend"], .backendCounters,
              help: "Lines the kernel took and no refusal quoted, sent within a second of an ICMP error from the same host that may have rate-limited its errors: maybe lost."),
        .init("statsrelay_backend_lines_unconfirmed_at_exit_total", .counter, ["backend"], .backendCounters,
              help: "Lines the kernel took less than 200 ms before the relay stopped or the backend left the pool: a refusal could still have come; to a TCP backend, lines written and not acknowledged by its kernel when the connection was let go."),
        .init("statsrelay_backend_unattributed_losses_total", .counter, ["backend"], .backendCounters,
              help: "Refusals that came after their packet was counted as sent (a round trip over 200 ms): packets_sent is too high by this many."),
        .init("statsrelay_backend_bytes_dropped_total", .counter, ["backend", "reason"], .backendCounters,
              help: "A TCP backend's bytes of the lines counted in statsrelay_backend_lines_dropped_total, by reason: tcp_queue_full, tcp_unsent_at_exit."),
        .init("statsrelay_backend_tcp_lines_lost_at_reset_total", .counter, ["backend"], .backendCounters,
              help: "Lines counted as sent to a TCP backend whose bytes its kernel had not acknowledged when the connection failed, at a failed write or seen without one (SIOCOUTQ at the failure): lost; a part of statsrelay_backend_lines_sent_total."),
        .init("statsrelay_backend_tcp_bytes_lost_at_reset_total", .counter, ["backend"], .backendCounters,
              help: "Bytes of the lines counted in statsrelay_backend_tcp_lines_lost_at_reset_total."),
        .init("statsrelay_backend_tcp_connects_total", .counter, ["backend"], .backendCounters,
              help: "TCP connections made to the backend, counted per worker."),
        .init("statsrelay_backend_tcp_connection_failures_total", .counter, ["backend"], .backendCounters,
              help: "TCP connections to the backend refused, timed out, unreachable or reset, counted per worker; each fails a health check."),
        .init("statsrelay_backend_tcp_bytes_received_total", .counter, ["backend"], .backendCounters,
              help: "Bytes a TCP backend sent to the relay (a banner, an error message), read and thrown away so that its close is seen behind them; a StatsD backend sends none."),
        .init("statsrelay_backend_lines_rehashed_away_total", .counter, ["backend"], .backendCounters,
              help: "Lines whose primary is this backend, routed to another while it was down."),
        .init("statsrelay_backend_lines_held_total", .counter, ["backend"], .backendCounters,
              help: "Lines held for this backend while it was down, or queued behind its replay."),
        .init("statsrelay_backend_lines_replayed_total", .counter, ["backend"], .backendCounters,
              help: "Held lines sent to this backend after it came back."),
        .init("statsrelay_backend_up", .gauge, ["backend"], .backendUp,
              help: "1 while the health view has the backend up, 0 while down (always 1 with --health-check none)."),
        .init("statsrelay_backend_state_changes_total", .counter, ["backend"], .backendStateChanges,
              help: "Times the backend went down or came back up."),
        .init("statsrelay_backend_flap_holds_total", .counter, ["backend"], .backendFlapHolds,
              help: "Times the backend went down again soon after coming up (--flap-hold-max) and was held down (flap damping)."),
        .init("statsrelay_backend_state_since_timestamp_seconds", .gauge, ["backend"], .backendStateSince,
              help: "Unix time the backend's current state (up or down) began; the relay's start if it never changed."),
        .init("statsrelay_fail_open_activations_total", .counter, [], .failOpenActivations,
              help: "Times every backend was down and the relay began failing open."),
        .init("statsrelay_failing_open", .gauge, [], .failingOpen,
              help: "1 while every backend is down and the relay fails open, else 0."),
        // Holding.
        .init("statsrelay_hold_in_use_bytes", .gauge, [], .holdInUseBytes,
              help: "Bytes of memory taken to hold down backends' packets, all workers together."),
        .init("statsrelay_hold_limit_bytes", .gauge, [], .holdLimitBytes,
              help: "The bound on held packets' memory (--hold-bytes)."),
        // The mirror pool (--mirror), all mirror backends together.
        .init("statsrelay_mirror_lines_mirrored_total", .counter, [], .relayCounters,
              help: "Copies of sampled lines packed for the mirror pool (--mirror, --mirror-sample)."),
        .init("statsrelay_mirror_lines_dropped_total", .counter, ["reason"], .relayCounters,
              help: "Mirror copies not delivered, by reason: no_send_buffer (the mirror's own send slots were all in use: a slow or stuck mirror; never a primary's loss), send_error, refused (ICMP port unreachable), unreachable (another ICMP error), unsent_at_exit (packed, never handed to the kernel before the stop budget ran out), tcp_queue_full (a TCP mirror backend's --tcp-backend-queue had no room), tcp_unsent_at_exit (queued for a TCP mirror backend, not written when the relay exited)."),
        .init("statsrelay_mirror_lines_sent_total", .counter, [], .relayCounters,
              help: "Mirror lines in packets the kernel took whole and no refusal came back for within 200 ms; to a TCP mirror backend, lines its kernel acknowledged, and those lost at a reset."),
        .init("statsrelay_mirror_packets_sent_total", .counter, [], .relayCounters,
              help: "Mirror packets the kernel took whole and no refusal came back for within 200 ms."),
        .init("statsrelay_mirror_bytes_sent_total", .counter, [], .relayCounters,
              help: "Bytes of the packets counted in statsrelay_mirror_packets_sent_total."),
        .init("statsrelay_mirror_send_retries_total", .counter, [], .relayCounters,
              help: "Mirror sends met by an earlier packet's pending refusal and sent once more: not a loss."),
        .init("statsrelay_mirror_lines_doubted_total", .counter, [], .relayCounters,
              help: "Mirror lines the kernel took, sent during an episode of ICMP errors the host may have rate-limited: maybe lost."),
        .init("statsrelay_mirror_lines_unconfirmed_at_exit_total", .counter, [], .relayCounters,
              help: "Mirror lines the kernel took less than 200 ms before the relay stopped: a refusal could still have come; to a TCP mirror backend, lines written and not acknowledged by its kernel when the connection was let go."),
        .init("statsrelay_mirror_lines_in_flight_at_exit_total", .counter, [], .relayCounters,
              help: "Mirror lines in sends handed to the kernel whose completion never came before the stop budget ran out."),
        .init("statsrelay_mirror_tcp_lines_lost_at_reset_total", .counter, [], .relayCounters,
              help: "Lines counted as sent to a TCP mirror backend whose bytes its kernel had not acknowledged when the connection failed: lost."),
        // Per mirror backend (label `backend`: the mirror backend as written).
        .init("statsrelay_mirror_backend_lines_sent_total", .counter, ["backend"], .mirrorBackendCounters,
              help: "A mirror backend's lines in packets the kernel took whole and no refusal came back for within 200 ms (over TCP: lines whose last byte a write handed the kernel)."),
        .init("statsrelay_mirror_backend_packets_sent_total", .counter, ["backend"], .mirrorBackendCounters,
              help: "A mirror backend's packets the kernel took whole and no refusal came back for within 200 ms (over TCP: writes)."),
        .init("statsrelay_mirror_backend_bytes_sent_total", .counter, ["backend"], .mirrorBackendCounters,
              help: "Bytes of the lines counted in statsrelay_mirror_backend_lines_sent_total."),
        .init("statsrelay_mirror_backend_lines_dropped_total", .counter, ["backend", "reason"], .mirrorBackendCounters,
              help: "A mirror backend's copies not delivered, by reason, as statsrelay_mirror_lines_dropped_total: no_send_buffer, send_error, refused, unreachable, unsent_at_exit, tcp_queue_full, tcp_unsent_at_exit."),
        .init("statsrelay_mirror_tcp_connection_failures_total", .counter, [], .relayCounters,
              help: "TCP connections to mirror backends refused, timed out, unreachable or reset, counted per worker (the mirror has no health checks)."),
        // The process.
        .init("statsrelay_io_driver_info", .gauge, ["driver"], .ioDriver,
              help: "The io driver the workers run: uring or portable (value 1)."),
        .init("statsrelay_build_info", .gauge, ["version"], .buildInfo,
              help: "The relay's version (value 1)."),
        .init("statsrelay_ring_fingerprint_info", .gauge, ["fingerprint", "hash_mode"], .ringFingerprint,
              help: "FNV-1a 64 of the hash mode and the backend identities in routing order (value 1): relays of one pool must show the same fingerprint."),
        .init("statsrelay_workers", .gauge, [], .workers,
              help: "Worker threads started."),
        .init("statsrelay_worker_counters_age_seconds", .gauge, ["worker"], .workerCountersAge,
              help: "Seconds since the worker last published its counters (every 100 ms while busy, about every second while idle)."),
        .init("statsrelay_log_write_errors_total", .counter, [], .logWriteErrors,
              help: "Log lines and reports dropped, wholly or in part, because stderr could not take them."),
        .init("statsrelay_start_time_seconds", .gauge, [], .startTime,
              help: "Unix time the relay started."),
        // The configuration file.
        .init("statsrelay_config_reloads_total", .counter, ["result"], .configReloads,
              help: "Configuration reloads (SIGHUP with --config) by result: success (the file is in force, keys that need a restart kept) or failure (the file was refused whole; the running configuration is untouched)."),
        .init("statsrelay_config_last_reload_successful", .gauge, [], .configLastReloadSuccessful,
              help: "1 unless the last reload failed (1 before any reload)."),
        .init("statsrelay_config_last_reload_success_timestamp_seconds", .gauge, [], .configLastReloadSuccessTime,
              help: "Unix time the configuration in force was loaded: the last successful reload, else the start."),
    ]

    /// The family and `reason` label a counter is exported under, from its dot name:
    /// `statsrelay.lines_forwarded` → `statsrelay_lines_forwarded_total`,
    /// `statsrelay.lines_dropped.nul_byte` → `statsrelay_lines_dropped_total{reason="nul_byte"}`,
    /// `statsrelay.backend.lines_dropped.refused` →
    /// `statsrelay_backend_lines_dropped_total{reason="refused"}` (the backend is a label too),
    /// `statsrelay.mirror.lines_dropped.refused` → `statsrelay_mirror_lines_dropped_total{reason="refused"}`.
    public static func exposition(ofCounterNamed dotName: String) -> (family: String, reason: String?) {
        var parts = dotName.split(separator: ".").map(String.init)
        if parts.first == "statsrelay" { parts.removeFirst() }
        var prefix = "statsrelay_"
        if parts.count > 1, parts.first == "backend" || parts.first == "mirror" {
            prefix += parts.removeFirst() + "_"
            // `statsrelay.mirror.backend.…`: a mirror backend's own counters.
            if prefix == "statsrelay_mirror_", parts.count > 1, parts.first == "backend" { prefix += parts.removeFirst() + "_" }
        }
        let reason = parts.count > 1 ? parts.removeLast() : nil
        let base = prefix + parts.joined(separator: "_") + "_total"
        return (String(base.map { $0.isASCII && ($0.isLetter || $0.isNumber) ? $0 : "_" }), reason)
    }
}

extension MetricFamily {
    /// `exposition(ofCounterNamed:)` of every counter of a table, indexed by raw value: worked
    /// out once per process, so a scrape never splits a dot name.
    static func expositionTable(_ counters: [(rawValue: Int, name: String)]) -> [(family: String, reason: String?)] {
        var table: [(family: String, reason: String?)] = Array(repeating: ("", nil), count: (counters.map(\.rawValue).max() ?? -1) + 1)
        for counter in counters { table[counter.rawValue] = exposition(ofCounterNamed: counter.name) }
        return table
    }
}

extension RelayCounter {
    /// The Prometheus family and `reason` label this counter is exported under.
    public var exposition: (family: String, reason: String?) { Self.expositions[rawValue] }

    private static let expositions = MetricFamily.expositionTable(allCases.map { ($0.rawValue, $0.name) })
}

extension BackendCounter {
    /// The Prometheus family and `reason` label this counter is exported under (with `backend`).
    public var exposition: (family: String, reason: String?) { Self.expositions[rawValue] }

    private static let expositions = MetricFamily.expositionTable(allCases.map { ($0.rawValue, $0.name) })
}
