import RelayKernel

/// What the admin endpoint answers, apart from HTTP itself: `GET /metrics`, `GET /healthz`,
/// `GET /` (and `HEAD` of each: the same answer, whose body the connection leaves out); 404 for
/// any other path, 405 for any other method. Pure, so tests call it directly.
public struct AdminEndpoint: Sendable {
    /// One response: status, type and body.
    public struct Response: Sendable, Equatable {
        /// The HTTP status code.
        public var status: Int
        /// The `Content-Type`.
        public var contentType: String
        /// The body.
        public var body: String

        /// A response as given (plain text unless `contentType` says otherwise).
        public init(status: Int, contentType: String = "text/plain; charset=utf-8", body: String) {
            self.status = status
            self.contentType = contentType
            self.body = body
        }
    }

    /// The methods served, as the `Allow` header of a 405 lists them.
    public static let allowedMethods = "GET, HEAD"

    /// The answer to a method other than `GET` and `HEAD`, whether the request parser knew it or not.
    public static let methodNotAllowed = Response(status: 405, body: "only GET and HEAD are served\n")

    /// The longest request target answered (`414` past it): no path of ours comes near it.
    public static let maximumTargetBytes = 1_024

    private let relay: Relay
    private let version: String
    private let startTimeUnixSeconds: Double
    private let stopNotice: StopNotice

    /// The endpoint of `relay`.
    ///
    /// - Parameters:
    ///   - version: the relay's version, for `statsrelay_build_info`.
    ///   - startTimeUnixSeconds: when the relay started, for `statsrelay_start_time_seconds`.
    ///   - stopNotice: announced when a stop begins with `--stop-delay`: `/healthz` answers 503
    ///     from then on, while the relay still relays.
    public init(relay: Relay, version: String, startTimeUnixSeconds: Double = Relay.unixTime(), stopNotice: StopNotice = StopNotice()) {
        self.relay = relay
        self.version = version
        self.startTimeUnixSeconds = startTimeUnixSeconds
        self.stopNotice = stopNotice
    }

    /// The answer to `method target` (the request's method and target as sent); for `HEAD`, the
    /// answer to `GET`, body included (the connection sends its length, not the body).
    public func respond(method: String, target: String) -> Response {
        guard method == "GET" || method == "HEAD" else { return Self.methodNotAllowed }
        guard target.utf8.count <= Self.maximumTargetBytes else { return Response(status: 414, body: "request target too long\n") }
        let path = target.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
        switch path {
        case "/metrics":
            let status = relay.workerStatus
            if !status.started {
                // The driver is chosen and the workers start one after another: until then the
                // counters and the driver would be those of a relay that is not running yet.
                return Response(status: 503, body: "starting: \(status.publishedAt.count) of \(relay.configuration.threads) workers started\n")
            }
            let snapshot = relay.snapshot(version: version, startTimeUnixSeconds: startTimeUnixSeconds)
            return Response(status: 200, contentType: PrometheusExposition.contentType, body: PrometheusExposition.render(snapshot))
        case "/healthz":
            let verdict = health()
            return Response(status: verdict.healthy ? 200 : 503, body: verdict.reason + "\n")
        case "/":
            return Response(status: 200, body: "statsrelay \(version) admin endpoint: GET /metrics (Prometheus), GET /healthz\n")
        default:
            return Response(status: 404, body: "not found: the paths are /metrics and /healthz\n")
        }
    }

    /// The relay's health now (see `HealthVerdict`).
    public func health(now: UInt64 = MonotonicClock.nanoseconds()) -> HealthVerdict {
        let status = relay.workerStatus
        return HealthVerdict.evaluate(
            started: status.started, stopping: status.stopping, stopAnnounced: stopNotice.isAnnounced, expectedWorkers: relay.configuration.threads, publishedAt: status.publishedAt,
            failures: status.failures, now: now)
    }
}
