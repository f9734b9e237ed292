import NIOCore
import NIOHTTP1
import NIOPosix
import RelayKernel

/// Fetches a path from a relay's admin endpoint (`statsrelay status`): one `GET` on a
/// connection of its own, answered whole or not at all.
public enum AdminClient {
    /// A response: status code and body.
    public struct Response: Sendable, Equatable {
        /// The HTTP status code.
        public var status: Int
        /// The body as text.
        public var body: String
    }

    /// The largest body accepted; a relay with thousands of backends stays far below it.
    public static let maximumBodyBytes = 32 << 20

    /// `GET path` from the endpoint at `address`.
    ///
    /// - Parameter timeout: for the connection and the response together.
    /// - Throws: `SystemCallError`: `connect tcp 127.0.0.1:8127: Connection refused (errno 111)`
    ///   when nothing listens; `GET http://…: Connection timed out (errno 110); no complete answer
    ///   within …` when the answer does not come whole within `timeout`; `GET http://…: Protocol
    ///   error (errno 71); the answer is not an HTTP response` when what comes back is not HTTP.
    public static func get(_ path: String, from address: AdminAddress, timeout: TimeAmount = .seconds(5)) throws(SystemCallError) -> Response {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        let loop = group.next()
        let promise = loop.makePromise(of: Response.self)
        let host = address.host.contains(":") ? "[\(address.host)]:\(address.port)" : "\(address.host):\(address.port)"
        let bootstrap = ClientBootstrap(group: group)
            .connectTimeout(timeout)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    try channel.pipeline.syncOperations.addHandler(ResponseCollector(path: path, host: host, promise: promise))
                }
            }
        let target = "tcp \(address)"
        let channel: any Channel
        do {
            channel = try bootstrap.connect(to: try NIOCore.SocketAddress(ipAddress: address.host, port: Int(address.port))).wait()
        } catch {
            promise.fail(error)
            throw SystemCallError("connect", target, Errno(rawValue: (error as? IOError)?.errnoCode ?? ETIMEDOUT))
        }
        // At the deadline the response fails as timed out (before the close would fail it as a
        // reset), unless it is whole by then.
        let deadline = loop.scheduleTask(in: timeout) {
            channel.pipeline.fireUserInboundEventTriggered(DeadlinePassed())
            channel.close(promise: nil)
        }
        defer {
            deadline.cancel()
            channel.close(promise: nil)
        }
        do {
            return try promise.futureResult.wait()
        } catch {
            let target = "http://\(host)\(path)"
            switch error {
            case let error as IOError:
                let timedOut = error.errnoCode == ETIMEDOUT
                throw SystemCallError(
                    "GET", target, Errno(rawValue: error.errnoCode), hint: timedOut ? "no complete answer within \(describe(timeout))" : nil)
            case is HTTPParserError, is ByteToMessageDecoderError:
                throw SystemCallError("GET", target, Errno(rawValue: EPROTO), hint: "the answer is not an HTTP response")
            default:
                throw SystemCallError("GET", target, Errno(rawValue: EIO), hint: "\(error)")
            }
        }
    }

    /// `timeout` as an operator reads it: `5s`, `300ms`.
    private static func describe(_ timeout: TimeAmount) -> String {
        let milliseconds = timeout.nanoseconds / 1_000_000
        return milliseconds % 1_000 == 0 ? "\(milliseconds / 1_000)s" : "\(milliseconds)ms"
    }
}

/// The user event `AdminClient.get` sends down its connection when its deadline passes.
private struct DeadlinePassed {}

/// Sends the request when the connection opens and collects the response.
private final class ResponseCollector: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundOut = HTTPClientRequestPart

    private let path: String
    private let host: String
    private let promise: EventLoopPromise<AdminClient.Response>
    private var status = 0
    private var body: ByteBuffer?
    private var done = false

    init(path: String, host: String, promise: EventLoopPromise<AdminClient.Response>) {
        self.path = path
        self.host = host
        self.promise = promise
    }

    func channelActive(context: ChannelHandlerContext) {
        var headers = HTTPHeaders()
        headers.add(name: "Host", value: host)
        headers.add(name: "User-Agent", value: "statsrelay-status")
        headers.add(name: "Connection", value: "close")
        context.write(wrapOutboundOut(.head(HTTPRequestHead(version: .http1_1, method: .GET, uri: path, headers: headers))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !done else { return }
        switch unwrapInboundIn(data) {
        case .head(let head):
            status = Int(head.status.code)
        case .body(var part):
            if body == nil { body = part } else { body!.writeBuffer(&part) }
            if body!.readableBytes > AdminClient.maximumBodyBytes { finish(.failure(IOError(errnoCode: EMSGSIZE, reason: "response too large"))) }
        case .end:
            let text = body.map { String(buffer: $0) } ?? ""
            finish(.success(AdminClient.Response(status: status, body: text)))
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard event is DeadlinePassed else {
            context.fireUserInboundEventTriggered(event)
            return
        }
        finish(.failure(IOError(errnoCode: ETIMEDOUT, reason: "no complete response before the deadline")))
    }

    func channelInactive(context: ChannelHandlerContext) {
        finish(.failure(IOError(errnoCode: ECONNRESET, reason: "connection closed before the response was whole")))
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        finish(.failure(error))
        context.close(promise: nil)
    }

    private func finish(_ result: Result<AdminClient.Response, any Error>) {
        guard !done else { return }
        done = true
        promise.completeWith(result)
    }
}
