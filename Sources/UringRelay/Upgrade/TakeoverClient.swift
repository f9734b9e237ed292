import Glibc
import RelayKernel

/// The new relay's side of a takeover (`statsrelay run --takeover PATH`): asks the running
/// relay at `PATH` for its listening sockets, checks them, and, once this relay relays on
/// them, says `ready` and waits for the old one's `done`.
///
/// The steps, in the order the command takes them (docs/operations.md, "Upgrade"):
/// `begin` (connect, `takeover`, receive and check `offer` and every `sockets` frame), start
/// the workers on the sockets while they stay shared with the old relay, then `handOver`
/// (`ready`, the old relay's `stopping` and `done`), or `fail` with the reason.
///
/// The sockets become this relay's only once the old relay has said it gave them up
/// (`stopping`, protocol version 4; `done` from an older relay). Until then, and for good when
/// that answer does not come, they stay shared: this relay's stop closes its descriptors and
/// leaves the sockets as they are for the old relay, which may be relaying on them still.
public final class TakeoverClient: Sendable {
    private let connection: ControlConnection
    /// The old relay's pid, as it said in its offer.
    public let predecessor: Int32
    /// The protocol version both relays speak (the offer's).
    public let version: Int
    private let messageTimeoutMilliseconds: Int32
    /// When the offer came (`MonotonicClock`): a relay of protocol version 3 waits 30 s from
    /// it for `ready` (`v3ReadyWindowNanoseconds`).
    private let offeredAt: UInt64

    /// How long after the offer a `ready` surely reaches a relay of protocol version 3 before
    /// it stops waiting for it (30 s; this leaves 5 s for its thread to be scheduled). Such a
    /// relay always stops once it has read `ready`, and says so only with `done`, after its
    /// whole stop (up to `--shutdown-timeout`, 60 s at most, and the flush).
    static let v3ReadyWindowNanoseconds: UInt64 = 25_000_000_000

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

    private init(connection: ControlConnection, predecessor: Int32, version: Int, messageTimeoutMilliseconds: Int32, offeredAt: UInt64) {
        self.connection = connection
        self.predecessor = predecessor
        self.version = version
        self.messageTimeoutMilliseconds = messageTimeoutMilliseconds
        self.offeredAt = offeredAt
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
        var offeredAt: UInt64 = 0
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
                offeredAt = MonotonicClock.nanoseconds()
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
        let client = TakeoverClient(
            connection: box, predecessor: pid, version: version, messageTimeoutMilliseconds: messageTimeoutMilliseconds, offeredAt: offeredAt)
        return (client, inherited)
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

    /// How a hand-over ended, once the sockets are this relay's.
    public enum HandOver: Sendable, Equatable {
        /// The old relay sent every batch and said so: its final counts.
        case done(received: UInt64, forwarded: UInt64, dropped: UInt64)
        /// The old relay said `stopping`, then closed the connection without `done`: it has
        /// ended (or died) without its counts; it had given the sockets up.
        case endedWithoutCounts
        /// The old relay said `stopping` but not `done` in time: it is still stopping, on
        /// sockets it has given up.
        case stillStopping
    }

    /// Tells the old relay this one relays on the sockets (`ready`) and waits for it to give
    /// them up: `stopping` (protocol version 4, at most the message time-out), then `done`
    /// (at most `doneTimeoutMilliseconds`). Against an older relay, `done` alone says it.
    ///
    /// - Returns: how the old relay ended; from then on the sockets are this relay's alone.
    /// - Throws: `Failure` (75) when the old relay did not give the sockets up: `ready` could
    ///   not be sent, or no `stopping` came (version 4: the old relay stopped waiting for
    ///   `ready`, or the connection broke), or no `done` came (before version 4: the old relay
    ///   cannot be told from one that carries on, unless `ready` went out well within its
    ///   30 s wait: it then surely stops). The old relay then keeps (or may keep) relaying on
    ///   the sockets: this relay must stop without touching them (they stay shared) and exit.
    ///   The connection is shut first, so an old relay that reads `ready` only now cannot send
    ///   `stopping` and keeps running.
    public func handOver(doneTimeoutMilliseconds: Int32 = 60_000) throws(Failure) -> HandOver {
        let readyAt = MonotonicClock.nanoseconds()
        let old = "the old relay (pid \(predecessor))"
        let leave = "it keeps relaying on the sockets; this relay stops without touching them and exits (try the takeover again)"
        do throws(Errno) { try connection.socket.sendFrame(TakeoverMessage.ready.encoded, timeoutMilliseconds: messageTimeoutMilliseconds) } catch {
            // An old relay that gave up first said why before it closed: the reason waits to be
            // read (a wait of 0 would read nothing: the frame's wait ends at its deadline first).
            let pending = answer(timeoutMilliseconds: 100)
            connection.socket.shutdown()
            let said = if case .message(.refused) = pending { "; \(pending)" } else { "" }
            throw Failure(exitStatus: 75, message: "takeover: could not tell \(old) that this relay is ready (\(error))\(said); \(leave)")
        }
        if version >= TakeoverMessage.stoppingVersion {
            switch answer(timeoutMilliseconds: messageTimeoutMilliseconds) {
            case .message(.stopping): break
            case .problem(.timedOut):
                // Shut, then look once more: the shutdown decides. A `stopping` the old relay
                // wrote before it is still read here (and it has given the sockets up); one it
                // writes after it fails with EPIPE (and it keeps them). Giving up without this
                // look could leave both relays stopping.
                connection.socket.shutdown()
                guard case .message(.stopping) = answer(timeoutMilliseconds: 100) else {
                    throw Failure(exitStatus: 75, message: "takeover: \(old) did not confirm that it stops (no answer in time); \(leave)")
                }
                return .stillStopping
            case let other:
                connection.socket.shutdown()
                throw Failure(exitStatus: 75, message: "takeover: \(old) did not confirm that it stops (\(other)); \(leave)")
            }
            switch answer(timeoutMilliseconds: doneTimeoutMilliseconds) {
            case .message(.done(let received, let forwarded, let dropped)): return .done(received: received, forwarded: forwarded, dropped: dropped)
            case .problem(.timedOut): return .stillStopping
            case .message, .malformed, .problem: return .endedWithoutCounts
            }
        }
        switch answer(timeoutMilliseconds: doneTimeoutMilliseconds) {
        case .message(.done(let received, let forwarded, let dropped)): return .done(received: received, forwarded: forwarded, dropped: dropped)
        case .problem(.timedOut) where readyAt &- offeredAt < Self.v3ReadyWindowNanoseconds:
            // It read `ready` (sent well within its wait) and so stops; its stop may take
            // longer than this wait (a 60 s --shutdown-timeout and the flush).
            return .stillStopping
        case .problem(.closed(received: 0)) where readyAt &- offeredAt < Self.v3ReadyWindowNanoseconds:
            // It stopped (or died stopping) without its counts, after `ready`.
            return .endedWithoutCounts
        case let other:
            connection.socket.shutdown()
            throw Failure(
                exitStatus: 75,
                message: "takeover: \(old), of protocol version \(version), did not report its end (\(other)), so it may be relaying on the sockets still; \(leave)")
        }
    }

    /// What came from the old relay after `ready`: a message, a frame that is none, or no frame.
    private enum Answer: CustomStringConvertible {
        case message(TakeoverMessage)
        case malformed(bytes: Int)
        case problem(UnixStreamSocket.FrameError)

        var description: String {
            switch self {
            case .message(.refused(_, let reason)): "it answered: \(TakeoverMessage.loggable(reason))"
            case .message(let message): "it answered '\(message.verb)'"
            case .malformed(let bytes): "it sent a malformed message (\(bytes) bytes)"
            case .problem(.timedOut): "no answer in time"
            case .problem(let error): "\(error)"
            }
        }
    }

    /// The old relay's next message, waited for at most `timeoutMilliseconds`.
    private func answer(timeoutMilliseconds: Int32) -> Answer {
        do throws(UnixStreamSocket.FrameError) {
            let frame = try connection.socket.receiveFrame(timeoutMilliseconds: timeoutMilliseconds)
            guard let message = TakeoverMessage(decoding: frame.payload) else { return .malformed(bytes: frame.payload.count) }
            return .message(message)
        } catch {
            return .problem(error)
        }
    }

    /// Tells the old relay this one could not start on the sockets: it keeps running.
    public func fail(reason: String) {
        try? connection.socket.sendFrame(TakeoverMessage.failed(reason: reason).encoded, timeoutMilliseconds: messageTimeoutMilliseconds)
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
