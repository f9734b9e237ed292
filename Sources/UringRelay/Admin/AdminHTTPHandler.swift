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
            let response = endpoint.respond(method: head.method.rawValue, target: head.uri)
            Self.write(response, omittingBody: head.method == .HEAD, version: head.version, context: context)
        }
    }

    /// Writes `response` with `Connection: close` and closes the connection once it is written.
    ///
    /// - Parameter omittingBody: for `HEAD`: the headers, `Content-Length` included, as for
    ///   `GET`, and no body.
    static func write(_ response: AdminEndpoint.Response, omittingBody: Bool, version: HTTPVersion, context: ChannelHandlerContext) {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: response.contentType)
        headers.add(name: "Content-Length", value: "\(response.body.utf8.count)")
        headers.add(name: "Connection", value: "close")
        headers.add(name: "Cache-Control", value: "no-store")
        if response.status == 405 { headers.add(name: "Allow", value: AdminEndpoint.allowedMethods) }
        let status = HTTPResponseStatus(statusCode: response.status)
        context.write(NIOAny(HTTPServerResponsePart.head(HTTPResponseHead(version: version, status: status, headers: headers))), promise: nil)
        if !omittingBody {
            var body = context.channel.allocator.buffer(capacity: response.body.utf8.count)
            body.writeString(response.body)
            context.write(NIOAny(HTTPServerResponsePart.body(.byteBuffer(body))), promise: nil)
        }
        let loopBoundContext = NIOLoopBound(context, eventLoop: context.eventLoop)
        context.writeAndFlush(NIOAny(HTTPServerResponsePart.end(nil))).whenComplete { _ in
            loopBoundContext.value.close(promise: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

/// Answers a request whose method the HTTP parser does not know (`BREW /metrics`, `get /`) with
/// 405, as the endpoint answers a method it knows but does not serve, instead of the generic 400
/// that `HTTPServerProtocolErrorHandler` (after it in the pipeline) writes for other parse errors.
final class UnknownMethodAnswer: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard let error = error as? HTTPParserError, case .invalidMethod = error else {
            context.fireErrorCaught(error)
            return
        }
        // The parser stops at the method, so the request's version is unknown: answer in 1.1.
        AdminHTTPHandler.write(AdminEndpoint.methodNotAllowed, omittingBody: false, version: .http1_1, context: context)
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
