/// Everything `GET /metrics` and `statsrelay status` show, read from a running relay at one
/// moment: a plain value, so the exposition is a pure function of it.
public struct RelaySnapshot: Sendable {
    /// One backend of the pool in force, as the health view sees it.
    public struct Backend: Sendable, Equatable {
        /// Its identity as written (`host:port[:instance]`): the `backend` label.
        public var identity: String
        /// Whether the health view has it up.
        public var up: Bool
        /// How many times it went down or came back.
        public var stateChanges: Int
        /// Unix time its current state began.
        public var stateSinceUnixSeconds: Double
        /// Times it went down as a flap and was held down (flap damping).
        public var flapHolds = 0

        /// A backend's health at the moment of the snapshot.
        public init(identity: String, up: Bool, stateChanges: Int, stateSinceUnixSeconds: Double) {
            self.identity = identity
            self.up = up
            self.stateChanges = stateChanges
            self.stateSinceUnixSeconds = stateSinceUnixSeconds
        }
    }

    /// Every worker's counters as last published, summed (backends that left the pool included).
    public var counters: RelayCounters
    /// The pool's backends in routing order.
    public var backends: [Backend]
    /// The listeners, as `udp:ADDRESS:PORT`: the `listener` label.
    public var listeners: [String]
    /// `uring` or `portable`.
    public var ioDriver: String
    /// The relay's version, e.g. `0.1.0`.
    public var version: String
    /// How names are spread over the backends (`jump`).
    public var hashMode: String
    /// `BackendPool.ringFingerprint` of the pool in force.
    public var ringFingerprint: String
    /// Bytes of hold memory taken.
    public var holdInUseBytes: Int
    /// `--hold-bytes`.
    public var holdLimitBytes: Int
    /// Times the relay began failing open.
    public var failOpenActivations: UInt64
    /// Whether it fails open now.
    public var failingOpen: Bool
    /// Seconds since each worker last published its counters, in worker order.
    public var workerCounterAgesSeconds: [Double]
    /// Log lines dropped because stderr could not take them.
    public var logWriteErrors: UInt64
    /// Unix time the relay started.
    public var startTimeUnixSeconds: Double
    /// Configuration reloads that succeeded and failed (`Relay.reloads`).
    public var configReloadsSucceeded: UInt64 = 0
    public var configReloadsFailed: UInt64 = 0
    /// Whether the last reload succeeded (`true` before any).
    public var configLastReloadSuccessful = true
    /// Unix time the configuration in force was loaded: the last successful reload, else the start.
    public var configLastReloadSuccessUnixSeconds: Double = 0

    /// A snapshot of the given values (see each property).
    public init(
        counters: RelayCounters, backends: [Backend], listeners: [String], ioDriver: String, version: String,
        hashMode: String, ringFingerprint: String, holdInUseBytes: Int, holdLimitBytes: Int,
        failOpenActivations: UInt64, failingOpen: Bool, workerCounterAgesSeconds: [Double],
        logWriteErrors: UInt64, startTimeUnixSeconds: Double
    ) {
        self.counters = counters
        self.backends = backends
        self.listeners = listeners
        self.ioDriver = ioDriver
        self.version = version
        self.hashMode = hashMode
        self.ringFingerprint = ringFingerprint
        self.holdInUseBytes = holdInUseBytes
        self.holdLimitBytes = holdLimitBytes
        self.failOpenActivations = failOpenActivations
        self.failingOpen = failingOpen
        self.workerCounterAgesSeconds = workerCounterAgesSeconds
        self.logWriteErrors = logWriteErrors
        self.startTimeUnixSeconds = startTimeUnixSeconds
    }
}
