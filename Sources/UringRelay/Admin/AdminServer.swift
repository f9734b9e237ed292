import NIOCore
import NIOHTTP1
import NIOPosix
import RelayKernel
import Synchronization

/// The admin endpoint (`--admin`): HTTP/1.1 on one event-loop thread of its own (swift-nio),
/// never a worker's; it answers with `AdminEndpoint`.
///
/// Reading it costs the data path nothing: a scrape sums the counters the workers published to
/// their boards at turn boundaries, and takes no lock a worker takes per datagram. Requests are
/// bounded (one per connection, `maximumRequestBytes`, a 5 s deadline, `maximumConnections` at
/// once), only `GET` is served, and nothing about a request is logged.
public final class AdminServer: Sendable {
    /// The most bytes a client may send on one connection.
    public static let maximumRequestBytes = 8_192
    /// The most connections served at once; more are closed as they arrive.
    public static let maximumConnections = 32
    /// How long a connection may take to send its request.
    public static let requestDeadline = TimeAmount.seconds(5)

    private let group: MultiThreadedEventLoopGroup
    private let channel: any Channel
    /// The address the endpoint listens on, with the port actually bound.
    public let address: AdminAddress

    /// Binds `address` and starts serving `endpoint` on a thread of its own.
    ///
    /// - Parameter avoidingCPUs: CPUs the thread must stay off (the workers'); it is restricted
    ///   to this process's other CPUs when there are any, and left to the scheduler otherwise.
    /// - Throws: `SystemCallError` (`bind tcp ADDR:PORT (--admin): …`) when the address cannot be bound,
    ///   e.g. another relay holds the port.
    public init(address: AdminAddress, endpoint: AdminEndpoint, avoidingCPUs: [Int] = []) throws(SystemCallError) {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let spare = WorkerThread.allowedCPUs.filter { !avoidingCPUs.contains($0) }
        if !spare.isEmpty, !avoidingCPUs.isEmpty {
            group.next().execute { try? WorkerThread.restrictCurrentThread(to: spare) }
        }
        let counter = ConnectionCount()
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 64)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.maxMessagesPerRead, value: 1)
            .childChannelInitializer { channel in
                guard counter.enter() else {
                    return channel.close()
                }
                // A hard deadline, not an idle timer: a client trickling bytes cannot keep a
                // connection (one of `maximumConnections`) for longer than this.
                let deadline = channel.eventLoop.scheduleTask(in: Self.requestDeadline) { channel.close(promise: nil) }
                channel.closeFuture.whenComplete { _ in
                    deadline.cancel()
                    counter.leave()
                }
                return channel.eventLoop.makeCompletedFuture {
                    let decoder = HTTPRequestDecoder(
                        leftOverBytesStrategy: .dropBytes, informationalResponseStrategy: .drop,
                        limitConfiguration: Self.decoderLimits)
                    try channel.pipeline.syncOperations.addHandlers([
                        InboundByteLimit(limit: Self.maximumRequestBytes),
                        HTTPResponseEncoder(),
                        ByteToMessageHandler(decoder),
                        HTTPServerProtocolErrorHandler(),
                        AdminHTTPHandler(endpoint: endpoint),
                    ])
                }
            }
        let target = "tcp \(address) (--admin)"
        do {
            let socketAddress = try NIOCore.SocketAddress(ipAddress: address.host, port: Int(address.port))
            channel = try bootstrap.bind(to: socketAddress).wait()
        } catch {
            try? group.syncShutdownGracefully()
            let code = (error as? IOError)?.errnoCode ?? EINVAL
            throw SystemCallError(
                "bind", target, Errno(rawValue: code),
                hint: code == EADDRINUSE
                    ? "another process (a second relay on this host?) holds the admin port: give each relay its own --admin ADDR:PORT, or --admin none"
                    : "the admin endpoint (--admin) cannot listen there")
        }
        self.group = group
        let bound = channel.localAddress?.port ?? Int(address.port)
        self.address = AdminAddress(host: address.host, port: UInt16(clamping: bound))
    }

    /// Stops listening, closes every connection and ends the thread; call once.
    public func stop() {
        try? channel.close().wait()
        try? group.syncShutdownGracefully()
    }

    /// Limits on one request's headers: far above what a scraper or probe sends.
    private static let decoderLimits: NIOHTTPDecoderLimitConfiguration = {
        var limits = NIOHTTPDecoderLimitConfiguration()
        limits.maxHeaderFieldSize = 4_096
        limits.maxHeaderListSize = 8_192
        limits.maxHeaderFieldCount = 64
        return limits
    }()
}

/// Connections open now, bounded by `AdminServer.maximumConnections`.
private final class ConnectionCount: Sendable {
    private let open = Atomic<Int>(0)

    /// Counts a new connection; `false` (and not counted) when the bound is reached.
    func enter() -> Bool {
        var current = open.load(ordering: .relaxed)
        while current < AdminServer.maximumConnections {
            let (exchanged, original) = open.compareExchange(expected: current, desired: current + 1, ordering: .relaxed)
            if exchanged { return true }
            current = original
        }
        return false
    }

    /// Counts a connection closed.
    func leave() { open.subtract(1, ordering: .relaxed) }
}
