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
/// bounded (one per connection, `maximumRequestBytes`, `requestHeadDeadline` for the request
/// head and `requestDeadline` for the whole exchange, `maximumConnections` at once), only `GET`
/// and `HEAD` are served, and nothing about a request is logged.
///
/// Idle or trickling clients cannot lock a probe out: when every connection slot is taken, the
/// oldest connection that has not yet sent its request head is closed to make room for the
/// newcomer (a connection being answered is never closed for one), and a connection that has
/// sent no complete head within `requestHeadDeadline` is closed.
public final class AdminServer: Sendable {
    /// The most bytes a client may send on one connection.
    public static let maximumRequestBytes = 8_192
    /// The most connections open at once; past it, a newcomer takes the slot of the oldest
    /// connection still waiting for its request head, or is closed when every one is being answered.
    public static let maximumConnections = 64
    /// How long after accepting a connection its request head (request line and headers) must
    /// be complete: a probe or scraper sends it at once, so only an idle or trickling client misses it.
    public static let requestHeadDeadline = TimeAmount.seconds(1)
    /// How long a connection may stay open in all: sending its request and reading the answer.
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
        let connections = ConnectionTable()
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 64)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.maxMessagesPerRead, value: 1)
            .childChannelInitializer { channel in
                let (admitted, evicted) = connections.admit(channel)
                evicted?.close(promise: nil)
                guard admitted else {
                    return channel.close()
                }
                // Hard deadlines, not idle timers: a client trickling bytes can keep a connection
                // neither past its head deadline without a complete head, nor past the whole one.
                let headDeadline = channel.eventLoop.scheduleTask(in: Self.requestHeadDeadline) {
                    if !connections.hasSentHead(channel) { channel.close(promise: nil) }
                }
                let deadline = channel.eventLoop.scheduleTask(in: Self.requestDeadline) { channel.close(promise: nil) }
                channel.closeFuture.whenComplete { _ in
                    headDeadline.cancel()
                    deadline.cancel()
                    connections.remove(channel)
                }
                return channel.eventLoop.makeCompletedFuture {
                    let decoder = HTTPRequestDecoder(
                        leftOverBytesStrategy: .dropBytes, informationalResponseStrategy: .drop,
                        limitConfiguration: Self.decoderLimits)
                    try channel.pipeline.syncOperations.addHandlers([
                        InboundByteLimit(limit: Self.maximumRequestBytes),
                        HTTPResponseEncoder(),
                        ByteToMessageHandler(decoder),
                        UnknownMethodAnswer(),
                        HTTPServerProtocolErrorHandler(),
                        AdminHTTPHandler(endpoint: endpoint) { connections.markHeadSent(channel) },
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

/// The admin connections open now, oldest first, each with whether its request head has arrived;
/// bounded by `AdminServer.maximumConnections`.
private final class ConnectionTable: Sendable {
    /// One open connection.
    private struct Entry {
        let id: ObjectIdentifier
        let channel: any Channel
        var headSent = false
    }

    // The admin event loop is the only thread touching it (one thread, every callback on it);
    // the lock makes that a fact the compiler checks, at no cost worth counting.
    private let entries = Mutex<[Entry]>([])

    /// Takes `channel` into the table. When it is full, the oldest connection that has not sent
    /// its request head makes room: it is returned as `evicted`, for the caller to close.
    /// `admitted` is `false` (and nothing evicted) when every connection is being answered.
    func admit(_ channel: any Channel) -> (admitted: Bool, evicted: (any Channel)?) {
        entries.withLock { entries in
            var evicted: (any Channel)?
            if entries.count >= AdminServer.maximumConnections {
                guard let oldest = entries.firstIndex(where: { !$0.headSent }) else { return (false, nil) }
                evicted = entries.remove(at: oldest).channel
            }
            entries.append(Entry(id: ObjectIdentifier(channel), channel: channel))
            return (true, evicted)
        }
    }

    /// Records that `channel` has sent its whole request head: it is being answered, and is no
    /// longer closed to make room.
    func markHeadSent(_ channel: any Channel) {
        let id = ObjectIdentifier(channel)
        entries.withLock { entries in
            if let index = entries.firstIndex(where: { $0.id == id }) { entries[index].headSent = true }
        }
    }

    /// Whether `channel` has sent its whole request head (`true` once it has left the table).
    func hasSentHead(_ channel: any Channel) -> Bool {
        let id = ObjectIdentifier(channel)
        return entries.withLock { entries in entries.first { $0.id == id }?.headSent ?? true }
    }

    /// Takes `channel` out of the table once it is closed.
    func remove(_ channel: any Channel) {
        let id = ObjectIdentifier(channel)
        entries.withLock { entries in entries.removeAll { $0.id == id } }
    }
}
