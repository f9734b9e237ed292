import NIOCore
import NIOHTTP1

/// Answers one HTTP request on an admin connection with `AdminEndpoint`, then closes it.
///
/// One request per connection keeps every connection's life short and its memory bounded; a
/// scraper opens a new one per scrape, which costs nothing at scrape intervals. A request body
/// is never read into memory (a GET has none); what arrives is bounded by `InboundByteLimit`.
/// Nothing about a request is logged.
final class AdminHTTPHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let endpoint: AdminEndpoint
    private let headReceived: () -> Void
    private var head: HTTPRequestHead?
    private var answered = false

    /// A handler answering with `endpoint`.
    ///
    /// - Parameter headReceived: called once the request head (request line and headers) is complete.
    init(endpoint: AdminEndpoint, headReceived: @escaping () -> Void = {}) {
        self.endpoint = endpoint
        self.headReceived = headReceived
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            if self.head == nil { headReceived() }
            self.head = head
        case .body:
            break
        case .end:
            guard let head, !answered else { return }
            answered = true
            respond(endpoint.respond(method: head.method.rawValue, target: head.uri), version: head.version, context: context)
        }
    }

    /// Writes `response` with `Connection: close` and closes the connection once it is written.
    private func respond(_ response: AdminEndpoint.Response, version: HTTPVersion, context: ChannelHandlerContext) {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: response.contentType)
        headers.add(name: "Content-Length", value: "\(response.body.utf8.count)")
        headers.add(name: "Connection", value: "close")
        headers.add(name: "Cache-Control", value: "no-store")
        if response.status == 405 { headers.add(name: "Allow", value: "GET") }
        let status = HTTPResponseStatus(statusCode: response.status)
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: version, status: status, headers: headers))), promise: nil)
        var body = context.channel.allocator.buffer(capacity: response.body.utf8.count)
        body.writeString(response.body)
        context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        let loopBoundContext = NIOLoopBound(context, eventLoop: context.eventLoop)
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in
            loopBoundContext.value.close(promise: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

/// Closes a connection whose client has sent more than `limit` bytes: an admin request is a
/// request line and a few headers, so anything larger is not one of ours.
final class InboundByteLimit: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private let limit: Int
    private var received = 0

    /// A limit of `limit` bytes per connection.
    init(limit: Int) { self.limit = limit }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        received += unwrapInboundIn(data).readableBytes
        guard received <= limit else {
            context.close(promise: nil)
            return
        }
        context.fireChannelRead(data)
    }
}
