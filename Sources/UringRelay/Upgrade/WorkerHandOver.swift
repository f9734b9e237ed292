import RelayKernel

/// A worker's part in handing listening sockets from one relay process to the next.
public struct WorkerHandOver: Sendable {
    /// The worker's index (its socket of each listener is the `worker`-th).
    public var worker: Int
    /// Where the worker leaves a copy of each listening socket it opens, by listener id
    /// (`0..<count` at start-up), and the flag its stop honours.
    public var registry: ListenerRegistry
    /// Per listener, the socket this worker inherits from the previous process, or `nil` to
    /// bind its own. The worker relays on a duplicate of it (so a retry on another driver
    /// finds it again) and never binds a fresh socket beside it.
    public var inherited: [SocketBox]?
    /// Per inherited listener, whether every worker reads that one socket (socket activation
    /// with one socket per listener): its kernel drops are then counted by worker 0 alone.
    public var sharedByWorkers: [Bool]
    /// Per inherited listener, the kernel drop counter of this worker's socket when the
    /// previous relay stopped counting its drops (it says so from protocol version 2 on): this
    /// worker counts from there, so no drop is counted by both or by neither. `nil` (a version 1
    /// peer, socket activation): from the counter's value at start.
    public var inheritedDropBaselines: [UInt32?]?
    /// Per listener index, the one socket the relay bound for every worker to read (a Unix
    /// datagram listener: a path cannot be bound once per worker); the worker relays on a
    /// duplicate. Not used when `inherited` is set.
    public var shared: [Int: SocketBox]
    /// Per TCP ingest listener (in `WorkerSettings.tcpListeners` order), the listening socket
    /// this worker inherits (a takeover, socket activation), or `nil` to bind its own. The worker
    /// accepts on a duplicate of it (so a retry on another driver finds it again).
    public var inheritedTCP: [SocketBox]?

    /// A worker's hand-over part.
    public init(
        worker: Int, registry: ListenerRegistry, inherited: [SocketBox]? = nil, sharedByWorkers: [Bool] = [],
        inheritedDropBaselines: [UInt32?]? = nil, shared: [Int: SocketBox] = [:], inheritedTCP: [SocketBox]? = nil
    ) {
        self.worker = worker
        self.registry = registry
        self.inherited = inherited
        self.sharedByWorkers = sharedByWorkers
        self.inheritedDropBaselines = inheritedDropBaselines
        self.shared = shared
        self.inheritedTCP = inheritedTCP
    }

    /// Opens a worker's listening socket of TCP listener `index` of `settings`: a duplicate of
    /// the one it inherited, with no bind (a fresh socket beside it would join the port's group
    /// and take a share of the connections), else one bound with `SO_REUSEPORT`. Its copy goes
    /// to the registry under the listener's id (`settings.tcpListenerID`), for the next takeover.
    ///
    /// - Throws: `SystemCallError` for the bind (`bind tcp ADDR`) or a duplicate.
    static func tcpListenSocket(_ settings: WorkerSettings, index: Int) throws(SystemCallError) -> TCPListenSocket {
        let socket: TCPListenSocket
        if let inherited = settings.handOver?.inheritedTCP, index < inherited.count {
            socket = try TCPListenSocket.adopting(inherited[index])
        } else {
            socket = try TCPListenSocket.listening(on: settings.tcpListeners[index])
        }
        if let handOver = settings.handOver, handOver.registry.keepsCopies {
            handOver.registry.keep(try socket.passable(), listener: settings.tcpListenerID(index), worker: handOver.worker)
        }
        return socket
    }
}
