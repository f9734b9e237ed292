import RelayKernel

/// What a worker is started with: the same for every worker, derived from one
/// `RelayConfiguration` (see `init(configuration:listeners:routing:)`) so that no default is
/// kept twice.
public struct WorkerSettings: Sendable {
    /// The addresses the worker listens on, each with `SO_REUSEPORT`; a datagram's listener is
    /// its index here.
    public var listeners: [SocketAddress]
    /// `--packet-len`.
    public var packetBytes: Int
    /// `--flush-interval` in nanoseconds.
    public var flushIntervalNanoseconds: UInt64
    /// `--rcvbuf`.
    public var receiveBufferBytes: Int
    /// `--max-datagram`.
    public var maxDatagramBytes: Int
    /// Receive buffers per worker (a power of two): provided buffers for the uring driver,
    /// messages per `recvmmsg` for the portable one.
    public var receiveBuffers: Int
    /// The `io_uring_enter2` minimum wait (uring driver).
    public var minimumWaitMicroseconds: UInt32
    /// The longest a stopping worker spends draining and flushing before it gives up.
    public var stopBudgetNanoseconds: UInt64
    /// The longest a stopping worker keeps receiving while clients keep sending; the rest of
    /// the stop budget is left for the final sends.
    public var drainBudgetNanoseconds: UInt64
    /// The relay-wide budget for held packets (`--hold-bytes`) and the replay pace
    /// (`--replay-rate`), shared by every worker.
    public var holdBudget: HoldBudget
    /// The backend pool in force and its updates.
    public var routing: RoutingState
    /// Where the worker publishes its live counters.
    public var board = CounterBoard()
    /// Spread each listener's datagrams at random over this many workers' sockets
    /// (`--reuseport-steering random` with several workers), or `nil` for the kernel's hash.
    public var reusePortSpread: Int?
    /// The CPU whose datagrams this worker's listening sockets take (`--reuseport-steering cpu`
    /// with several workers: the CPU the worker is pinned to), or `nil` for none. Set per worker
    /// by the relay; `nil` here also clears what a previous process set on inherited sockets.
    public var incomingCPU: Int?
    /// `SO_SNDBUF` requested for each backend socket (see `RelayConfiguration.backendSendBufferBytes`).
    public var backendSendBufferBytes: Int
    /// `--validate` (fixed for the worker's life).
    public var validation: ValidationMode = .loose
    /// `--hash-key` (fixed for the worker's life).
    public var hashKey: HashKeyMode = .name
    /// `--metrics-prefix` and `--metrics-tags` (fixed for the worker's life).
    public var rewrite = LineRewrite()
    /// `--sendproto`: the transport of backends written without a scheme (fixed for the
    /// worker's life).
    public var sendProtocol: BackendTransport = .udp
    /// `--tcp-backend-queue`: bytes held per TCP backend (fixed for the worker's life).
    public var tcpBackendQueueBytes = RelayConfiguration.defaultTCPBackendQueueBytes
    /// The mirror pool (`--mirror`, fixed for the process's life), if any.
    public var mirror: MirrorPool?
    /// The TCP ingest listeners' addresses (`RelayConfiguration.tcpListenAddresses`; after the
    /// first worker started, with the ports it was given), each bound by every worker with
    /// `SO_REUSEPORT`; their listener ids follow the UDP and Unix listeners' (`tcpListenerID`).
    public var tcpListeners: [SocketAddress] = []
    /// The most TCP ingest connections this worker keeps open
    /// (`RelayConfiguration.tcpMaxConnectionsPerWorker`).
    public var tcpMaxConnections = RelayConfiguration.defaultTCPMaxConnections
    /// `--tcp-idle-timeout`.
    public var tcpIdleTimeoutNanoseconds = RelayConfiguration.defaultTCPIdleTimeoutNanoseconds
    /// How the io_uring driver reads TCP ingest connections, and its TCP buffer group.
    public var tcpReceive = TCPReceiveMode.auto
    public var tcpReceiveBuffers = RelayConfiguration.defaultTCPReceiveBuffers
    public var tcpReceiveBufferBytes = RelayConfiguration.defaultTCPReceiveBufferBytes
    /// The worker's part in a takeover: sockets it inherits, where it leaves copies of its own
    /// (`nil`: binds its own and keeps no copy).
    public var handOver: WorkerHandOver?

    /// Settings for one worker of `configuration`, sharing `holdBudget` with the other workers.
    public init(
        configuration: RelayConfiguration, listeners: [SocketAddress], routing: RoutingState, holdBudget: HoldBudget
    ) {
        self.listeners = listeners
        packetBytes = configuration.packetBytes
        flushIntervalNanoseconds = configuration.flushIntervalNanoseconds
        receiveBufferBytes = configuration.receiveBufferBytes
        maxDatagramBytes = configuration.maxDatagramBytes
        receiveBuffers = configuration.receiveBuffers
        minimumWaitMicroseconds = configuration.minimumWaitMicroseconds
        backendSendBufferBytes = configuration.backendSendBufferBytes
        reusePortSpread = configuration.reusePortSteering == .random && configuration.threads > 1 ? configuration.threads : nil
        stopBudgetNanoseconds = configuration.shutdownTimeoutNanoseconds
        drainBudgetNanoseconds = configuration.shutdownTimeoutNanoseconds / 3 * 2
        self.holdBudget = holdBudget
        self.routing = routing
        validation = configuration.validation
        hashKey = configuration.hashKey
        rewrite = configuration.rewrite
        sendProtocol = configuration.sendProtocol
        tcpBackendQueueBytes = configuration.tcpBackendQueueBytes
        tcpListeners = configuration.tcpListenAddresses
        tcpMaxConnections = configuration.tcpMaxConnectionsPerWorker
        tcpIdleTimeoutNanoseconds = configuration.tcpIdleTimeoutNanoseconds
        tcpReceive = configuration.tcpReceive
        tcpReceiveBuffers = configuration.tcpReceiveBuffers
        tcpReceiveBufferBytes = configuration.tcpReceiveBufferBytes
    }

    /// The listener id of TCP listener `index` (of `tcpListeners`): after every start-up UDP
    /// and Unix listener's.
    public func tcpListenerID(_ index: Int) -> UInt32 { UInt32(listeners.count + index) }
}

extension WorkerSettings {
    /// The sizes of this worker's send slots, queues and pinned memory for a pool of
    /// `backendCount` backends.
    public func ringSizing(backendCount: Int) -> RingSizing {
        // Rewritten lines fill more packets per datagram: the reserve is sized for them.
        RingSizing(
            receiveBuffers: receiveBuffers, packetBytes: packetBytes,
            maxLineBytes: rewrite.rewrittenDatagramBytes(maxDatagramBytes), backendCount: backendCount,
            mirrorBackendCount: mirror?.count ?? 0, streamReceiveBuffers: tcpReceiveGroupBuffers)
    }

    /// Buffers of the io_uring worker's TCP receive group: none unless the worker starts with a
    /// TCP listener (a relay without one pins nothing more; a listener added by a reload is
    /// then read through epoll) and reads by completions.
    public var tcpReceiveGroupBuffers: Int { tcpListeners.isEmpty || tcpReceive == .epoll ? 0 : tcpReceiveBuffers }

    /// The sizes for the pool in force now (what the start-up probe tries).
    public var ringSizing: RingSizing { ringSizing(backendCount: routing.current.count) }
}

extension RelayConfiguration {
    /// The sizes of each worker's send slots, queues and pinned memory, with the configured
    /// backends (what the memlock advice is computed from).
    public var ringSizing: RingSizing {
        RingSizing(
            receiveBuffers: receiveBuffers, packetBytes: packetBytes,
            maxLineBytes: rewrite.rewrittenDatagramBytes(maxDatagramBytes), backendCount: backends.count,
            mirrorBackendCount: mirror.count,
            streamReceiveBuffers: tcpListenAddresses.isEmpty || tcpReceive == .epoll ? 0 : tcpReceiveBuffers)
    }
}

/// Facts about a worker's kernel resources, for the start-up log.
public struct WorkerFacts: Sendable {
    /// The driver that runs the worker.
    public var driver: IOBackendChoice
    /// The listening addresses with the ports actually bound.
    public var listeners: [SocketAddress]
    /// The first listening address.
    public var listen: SocketAddress { listeners[0] }
    /// The receive buffer the kernel granted.
    public var receiveBufferBytes: Int
    /// The ring's setup flags by name (empty for the portable driver).
    public var ringFlags: [String]
    /// Whether the kernel honours the minimum wait.
    public var minimumWait: Bool
    /// Receive buffers and their size.
    public var receiveBuffers: Int
    public var receiveBufferSize: Int
    /// Send-buffer slots.
    public var sendSlots: Int
    /// The longest the adapted minimum wait may grow to (`AdaptiveMinimumWait`); `--min-wait`
    /// where it does not adapt, 0 on the portable driver, which has no minimum wait.
    public var adaptiveWaitCeilingMicroseconds: UInt32 = 0
    /// The TCP ingest listeners' addresses with the ports actually bound.
    public var tcpListeners: [SocketAddress] = []
    /// How the TCP ingest connections are read.
    public var tcpReads: TCPReads = .epoll

    /// How a worker reads its TCP ingest connections.
    public enum TCPReads: String, Sendable {
        /// Non-blocking `recv(2)` on the connections epoll reports ready (the portable driver;
        /// io_uring without a TCP receive group).
        case epoll
        /// A multishot `recv` per connection into the TCP receive group, one buffer per CQE.
        case multishot
        /// The same with receive bundles (`IORING_RECVSEND_BUNDLE`): a CQE may fill several.
        case bundles
    }
}
