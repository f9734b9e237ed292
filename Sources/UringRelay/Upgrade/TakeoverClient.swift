import Glibc
import RelayKernel

/// The new relay's side of a takeover (`statsrelay run --takeover PATH`): asks the running
/// relay at `PATH` for its listening sockets, checks them, and, once this relay relays on
/// them, says `ready` and waits for the old one's `done`.
///
/// The steps, in the order the command takes them (docs/operations.md, "Upgrade"):
/// `begin` (connect, `takeover`, receive and check `offer` and every `sockets` frame), start
/// the workers on the sockets, then `ready` (or `fail` with the reason), then `awaitDone`.
public final class TakeoverClient: Sendable {
    private let connection: ControlConnection
    /// The old relay's pid, as it said in its offer.
    public let predecessor: Int32
    private let messageTimeoutMilliseconds: Int32

    /// Why a takeover did not happen: each names what the operator can do.
    public struct Failure: Error, CustomStringConvertible, Sendable {
        /// The exit status it calls for: 64 for a request the running relay refuses as it
        /// stands (listeners, threads, protocol version), 75 for a try-again-later (no relay
        /// there, busy, stopping), 71 for sockets that fail the checks or a broken exchange.
        public var exitStatus: Int32
        /// What happened.
        public var message: String
        public var description: String { message }
    }

    private init(connection: ControlConnection, predecessor: Int32, messageTimeoutMilliseconds: Int32) {
        self.connection = connection
        self.predecessor = predecessor
        self.messageTimeoutMilliseconds = messageTimeoutMilliseconds
    }

    /// Connects to the relay at `path` and takes its listening sockets for a relay of
    /// `threads` workers on `listeners` and TCP ingest listeners `tcpListeners` (as configured).
    ///
    /// The TCP listeners come over from a relay of protocol version 3 on; an older one hands
    /// over its datagram listeners alone (`InheritedListeners.tcpSockets` is then empty, and
    /// this relay binds its own TCP listeners).
    /// - Throws: `Failure`; the old relay then keeps running unchanged.
    public static func begin(
        path: String, threads: Int, listeners: [SocketAddress], tcpListeners: [SocketAddress] = [], messageTimeoutMilliseconds: Int32 = 5_000,
        offerTimeoutMilliseconds: Int32 = 10_000
    ) throws(Failure) -> (client: TakeoverClient, listeners: InheritedListeners) {
        // The newest version first; a relay that speaks only an older one refuses it
        // (`code=version`) and is asked again in the next older.
        var version = TakeoverMessage.version
        var box: ControlConnection
        let pid: Int32
        var named: [String] = []
        while true {
            named = listeners.map(\.description) + (version >= TakeoverMessage.tcpVersion ? tcpListeners.map(TCPIngest.label) : [])
            box = try request(path: path, version: version, threads: threads, listeners: named, messageTimeoutMilliseconds: messageTimeoutMilliseconds)
            let (first, stray) = try firstAnswer(box, path: path, offerTimeoutMilliseconds: offerTimeoutMilliseconds)
            guard stray.isEmpty else { throw Failure(exitStatus: 71, message: "takeover: \(path) sent sockets before its offer") }
            switch first {
            case .offer(let offeredVersion, let offeredThreads, let count, let offeredPID):
                guard offeredVersion == version, offeredThreads == threads, count == named.count else {
                    throw Failure(exitStatus: 71, message: "takeover: \(path) offered \(offeredThreads) workers × \(count) listeners (version \(offeredVersion)), not \(threads) × \(named.count) (version \(version))")
                }
                pid = offeredPID
            case .refused(.version, _) where version > TakeoverMessage.versions.lowerBound:
                version -= 1
                continue
            case .refused(let code, let reason):
                let status: Int32 = code == .mismatch || code == .version ? 64 : 75
                throw Failure(exitStatus: status, message: "takeover refused by the running relay (\(code.rawValue)): \(TakeoverMessage.loggable(reason)); it keeps running")
            default:
                throw Failure(exitStatus: 71, message: "takeover: \(path) answered '\(first.verb)', not an offer")
            }
            break
        }
        var addresses: [SocketAddress] = []
        var sockets: [[SocketBox]] = []
        var dropBaselines: [[UInt32?]?] = []
        for (index, wanted) in listeners.enumerated() {
            let (message, passed) = try read(box.socket, timeoutMilliseconds: messageTimeoutMilliseconds, path: path)
            guard case .sockets(index, let spec, let drops) = message else {
                throw Failure(exitStatus: 71, message: "takeover: \(path) sent '\(message.verb)' where listener \(index)'s sockets were due")
            }
            guard passed.count == threads else {
                throw Failure(exitStatus: 71, message: "takeover: listener \(index) came with \(passed.count) sockets, not \(threads)")
            }
            // The old relay matched `wanted` against its configured or bound address; the
            // sockets themselves must be bound to the one it names, and to a port `wanted` allows.
            let bound = passed[0].socket.localAddress
            for socket in passed {
                if let problem = socket.socket.listenerMismatch(expected: bound) ?? (socket.socket.localAddress.description == spec ? nil : "bound to \(socket.socket.localAddress), offered as \(TakeoverMessage.loggable(spec))") {
                    throw Failure(exitStatus: 71, message: "takeover: a socket passed for listener \(index) fails its check: \(problem)")
                }
            }
            if let problem = passed[0].socket.listenerMismatch(expected: wanted) {
                throw Failure(exitStatus: 64, message: "takeover: listener \(index) (\(wanted)): \(problem)")
            }
            addresses.append(bound)
            sockets.append(passed)
            dropBaselines.append(drops?.count == threads ? drops : nil)
        }
        var inherited = InheritedListeners(addresses: addresses, sockets: sockets)
        // Only whole: otherwise every socket's drops are counted from their value at start.
        if dropBaselines.allSatisfy({ $0 != nil }) { inherited.dropBaselines = dropBaselines.map { $0! } }
        if version >= TakeoverMessage.tcpVersion {
            for (offset, wanted) in tcpListeners.enumerated() {
                let index = listeners.count + offset
                let (message, passed) = try read(box.socket, timeoutMilliseconds: messageTimeoutMilliseconds, path: path)
                guard case .sockets(index, let spec, _) = message else {
                    throw Failure(exitStatus: 71, message: "takeover: \(path) sent '\(message.verb)' where listener \(index)'s sockets were due")
                }
                guard passed.count == threads else {
                    throw Failure(exitStatus: 71, message: "takeover: listener \(index) came with \(passed.count) sockets, not \(threads)")
                }
                // Every worker's listening socket, bound to the address the old relay names.
                guard let bound = TCPListenSocket.boundAddress(of: passed[0]) else {
                    throw Failure(exitStatus: 71, message: "takeover: a socket passed for listener \(index) is no TCP socket")
                }
                for socket in passed {
                    // (No SO_REUSEPORT asked: one socket every worker accepts on, from systemd, is as good.)
                    let problem = TCPListenSocket.listenerMismatch(socket, expected: bound, requiringReusePort: false)
                        ?? (TCPIngest.label(bound) == spec ? nil : "bound to \(TCPIngest.label(bound)), offered as \(TakeoverMessage.loggable(spec))")
                    if let problem {
                        throw Failure(exitStatus: 71, message: "takeover: a socket passed for listener \(index) fails its check: \(problem)")
                    }
                }
                if let problem = TCPListenSocket.listenerMismatch(passed[0], expected: wanted, requiringReusePort: false) {
                    throw Failure(exitStatus: 64, message: "takeover: listener \(index) (\(TCPIngest.label(wanted))): \(problem)")
                }
                inherited.tcpAddresses.append(bound)
                inherited.tcpSockets.append(passed)
            }
        }
        return (TakeoverClient(connection: box, predecessor: pid, messageTimeoutMilliseconds: messageTimeoutMilliseconds), inherited)
    }

    /// Connects to `path` and asks, in protocol `version`, for the sockets.
    private static func request(
        path: String, version: Int, threads: Int, listeners: [String], messageTimeoutMilliseconds: Int32
    ) throws(Failure) -> ControlConnection {
        let socket: UnixStreamSocket
        do throws(SystemCallError) { socket = try UnixStreamSocket.connected(to: path) } catch {
            throw Failure(exitStatus: 75, message: "takeover: no running relay reachable at \(path): \(error)")
        }
        let box = ControlConnection(socket)
        let request = TakeoverMessage.takeover(version: version, threads: threads, listeners: listeners)
        do throws(Errno) { try box.socket.sendFrame(request.encoded, timeoutMilliseconds: messageTimeoutMilliseconds) } catch {
            // A relay busy with another takeover refuses at once and closes, maybe before the
            // request arrived (EPIPE): its refusal is still there to read.
            box.sendError = error
        }
        return box
    }

    /// The running relay's answer to the request: an offer or a refusal.
    private static func firstAnswer(
        _ box: ControlConnection, path: String, offerTimeoutMilliseconds: Int32
    ) throws(Failure) -> (TakeoverMessage, [SocketBox]) {
        do throws(Failure) {
            return try read(box.socket, timeoutMilliseconds: box.sendError == nil ? offerTimeoutMilliseconds : 1_000, path: path)
        } catch {
            if let sendError = box.sendError { throw Failure(exitStatus: 75, message: "takeover: could not send the request to \(path): \(sendError)") }
            throw error
        }
    }

    /// Tells the old relay this one relays on the sockets: it stops receiving, sends what it
    /// took and exits.
    ///
    /// - Throws: `Failure` (75) when it cannot be told: it then keeps running beside this one,
    ///   both relaying from the same sockets, until it is stopped.
    public func ready() throws(Failure) {
        do throws(Errno) { try connection.socket.sendFrame(TakeoverMessage.ready.encoded, timeoutMilliseconds: messageTimeoutMilliseconds) } catch {
            throw Failure(exitStatus: 75, message: "takeover: could not tell the old relay (pid \(predecessor)) to stop: \(error)")
        }
    }

    /// Tells the old relay this one could not start on the sockets: it keeps running.
    public func fail(reason: String) {
        try? connection.socket.sendFrame(TakeoverMessage.failed(reason: reason).encoded, timeoutMilliseconds: messageTimeoutMilliseconds)
    }

    /// Waits, at most `timeoutMilliseconds`, for the old relay's `done`: its final counts, or
    /// `nil` when it closed the connection without them or did not answer in time.
    public func awaitDone(timeoutMilliseconds: Int32) -> (received: UInt64, forwarded: UInt64, dropped: UInt64)? {
        guard let frame = try? connection.socket.receiveFrame(timeoutMilliseconds: timeoutMilliseconds),
              case .done(let received, let forwarded, let dropped)? = TakeoverMessage(decoding: frame.payload) else { return nil }
        return (received, forwarded, dropped)
    }

    private static func read(
        _ socket: borrowing UnixStreamSocket, timeoutMilliseconds: Int32, path: String
    ) throws(Failure) -> (TakeoverMessage, [SocketBox]) {
        let frame: (payload: [UInt8], sockets: [SocketBox])
        do throws(UnixStreamSocket.FrameError) { frame = try socket.receiveFrame(timeoutMilliseconds: timeoutMilliseconds) } catch {
            throw Failure(exitStatus: 75, message: "takeover: no answer from \(path): \(error)")
        }
        guard let message = TakeoverMessage(decoding: frame.payload) else {
            throw Failure(exitStatus: 71, message: "takeover: \(path) sent a malformed message (\(frame.payload.count) bytes)")
        }
        return (message, frame.sockets)
    }
}

/// The client's connection, shared by its steps (one thread uses it: the command's).
final class ControlConnection: @unchecked Sendable {
    let socket: UnixStreamSocket
    /// Why the request could not be sent, if it could not (a refusal may still be there to read).
    var sendError: Errno?
    init(_ socket: consuming UnixStreamSocket) { self.socket = socket }
}
