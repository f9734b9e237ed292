import BasicContainers
import Glibc
import RelayKernel

/// One TCP ingest listener of a worker: its own `SO_REUSEPORT` listening socket and its id.
struct TCPIngestListener: ~Copyable {
    /// Its listener id (the core counts it under `tcp:ADDR:PORT`).
    let id: UInt32
    let socket: TCPListenSocket
    /// Whether a multishot accept is armed on it (io_uring driver).
    var acceptArmed = false
    /// Its accept is to be cancelled (it was removed, or the worker stops accepting).
    var cancelWanted = false
    /// Not before when its accept is armed again after running out of descriptors (`EMFILE`,
    /// `ENFILE`) or memory, monotonic nanoseconds; 0: at once.
    var retryAt: UInt64 = 0
}

/// One open TCP ingest connection: its socket, its line framer (room for one partial line,
/// `--max-datagram` bytes, reserved at accept) and when it last sent something.
struct TCPIngestConnection: ~Copyable {
    let socket: TCPIngestSocket
    var framer: StreamLineFramer
    /// The listener it came in on.
    let listener: UInt32
    /// Told apart from a connection that takes its place in the table (its epoll token holds it).
    let serial: UInt32
    /// When it last delivered bytes (or was accepted), monotonic nanoseconds.
    var lastActivity: UInt64
}

/// A worker's TCP ingest: its listening sockets (one per TCP listener, bound by this worker
/// with `SO_REUSEPORT`, so the kernel spreads connections over the workers), the connections it
/// accepted, and one epoll instance holding the connections (and, under the portable driver,
/// the listening sockets). Shared by both drivers: each waits on the epoll descriptor beside its
/// own (the portable driver in its `ppoll` set, the io_uring driver with a poll request) and
/// calls `service` when it is readable. The io_uring driver takes the listening sockets out of
/// epoll (`acceptByCompletions`) and keeps a multishot accept armed on each instead: each
/// connection it completes is handed on with `accepted(_:core:now:)`.
///
/// Per connection, bytes are read (non-blocking, into one buffer of the worker's) and framed
/// (`StreamLineFramer`): only complete lines go to the core, exactly as a datagram's lines do,
/// counted under the connection's listener. Each read takes at most `--max-datagram` bytes less
/// the partial line held, so what one read hands on (the completed partial line and the whole
/// lines after it) is never more than one datagram's worth: the core's send-slot reserve for
/// one datagram covers it. Nothing is allocated per read or per line; a connection's framer is
/// allocated at its accept.
///
/// The relay never writes to a client, so a client that stops reading never blocks a worker.
/// A connection closes when its peer closes (its last line relayed even without a newline),
/// on a read error, on a line longer than `--max-datagram`, after `--tcp-idle-timeout` without
/// a byte, and at a stop; each close counted by reason under its listener.
struct TCPIngest: ~Copyable {
    private(set) var listeners: UniqueArray<TCPIngestListener>
    /// Listeners removed (a reload, a stop) while a multishot accept was armed on them: each
    /// closes once its accept has ended (the cancellation completed), so the kernel never
    /// accepts on a descriptor that was closed and perhaps reused.
    private(set) var retiring: UniqueArray<TCPIngestListener>
    /// The io_uring driver accepts with multishot accepts: the listening sockets are not in
    /// the epoll set.
    private(set) var completionAccepts = false
    private var connections: UniqueArray<TCPIngestConnection>
    /// Not open while the worker has had no TCP listener.
    private var poll: EventPoll
    private var buffer: StreamReadBuffer
    private let maximumLineBytes: Int
    private let maximumConnections: Int
    private let idleTimeoutNanoseconds: UInt64
    private var nextSerial: UInt32 = 0
    /// When idle connections are looked for next.
    private(set) var nextIdleCheck: UInt64 = .max
    /// Whether the listening sockets are still open (closed once the core stops running).
    private(set) var accepting = true
    /// Says whether another process holds the listening sockets too (a takeover, systemd):
    /// then a retiring listener must not stop listening (`retire`).
    private let registry: ListenerRegistry?

    /// A token's top bit marks a listening socket (its low 32 bits its listener id); without it,
    /// a connection (low 32 bits its position, the next 31 its serial).
    private static let listenerTokenBit: UInt64 = 1 << 63
    /// Connections accepted from one listener per `service` (the rest wait in the backlog).
    private static let acceptsPerService = 256
    /// Reads of one connection per `service` before the others get their turn.
    private static let readsPerService = 4
    /// How long accepting pauses after an accept failed for want of a descriptor or memory:
    /// on the epoll path the listening sockets leave the epoll set (a level-triggered listener
    /// whose waiting connection cannot be taken would otherwise wake the worker at once, turn
    /// after turn); on the io_uring driver the multishot accept is armed again only then. The
    /// connection waits in the listen queue meanwhile.
    static let acceptPauseNanoseconds: UInt64 = 100_000_000
    /// When the epoll path's accepting resumes after such a failure (`.max`: not paused).
    private(set) var acceptPausedUntil: UInt64 = .max
    /// How often idle connections are looked for at most: a tenth of the timeout, and at
    /// least every second.
    private var idleCheckInterval: UInt64 { max(1_000_000, min(idleTimeoutNanoseconds / 10, 1_000_000_000)) }

    /// Binds this worker's socket of each TCP listener of `settings` (ids
    /// `settings.tcpListenerID`) and names each in `core`.
    ///
    /// - Throws: `SystemCallError` from the first that cannot be bound or watched.
    init(settings: WorkerSettings, core: inout RelayCore) throws(SystemCallError) {
        maximumLineBytes = settings.maxDatagramBytes
        registry = settings.handOver?.registry
        maximumConnections = settings.tcpMaxConnections
        idleTimeoutNanoseconds = settings.tcpIdleTimeoutNanoseconds
        listeners = UniqueArray(minimumCapacity: settings.tcpListeners.count)
        connections = UniqueArray(minimumCapacity: 0)
        retiring = UniqueArray(minimumCapacity: 0)
        buffer = StreamReadBuffer(capacity: settings.tcpListeners.isEmpty ? 1 : settings.maxDatagramBytes)
        guard !settings.tcpListeners.isEmpty else {
            poll = EventPoll()
            return
        }
        let poll = try EventPoll(capacity: 256)
        for (index, address) in settings.tcpListeners.enumerated() {
            // Inherited (a takeover, systemd) or bound; its copy kept for the next takeover.
            let socket = try WorkerHandOver.tcpListenSocket(settings, index: index)
            let id = settings.tcpListenerID(index)
            do throws(Errno) { try poll.add(socket.pollDescriptor, token: Self.listenerTokenBit | UInt64(id)) } catch {
                throw SystemCallError("epoll_ctl", "tcp \(address)", error)
            }
            core.nameListener(id: id, label: Self.label(socket.localAddress))
            listeners.append(TCPIngestListener(id: id, socket: socket))
        }
        self.poll = poll
        nextIdleCheck = MonotonicClock.nanoseconds() &+ idleCheckInterval
    }

    /// The `listener` label of a TCP listener bound to `address`.
    static func label(_ address: SocketAddress) -> String { "tcp:\(address)" }

    /// The epoll descriptor to wait on, when there is a TCP listener or connection.
    var pollDescriptor: Int32? { poll.pollDescriptor }

    /// The bound addresses of the listening sockets, in order.
    var boundAddresses: [SocketAddress] {
        var bound: [SocketAddress] = []
        for index in listeners.indices { bound.append(listeners[index].socket.localAddress) }
        return bound
    }

    /// How many connections are open.
    var openConnections: Int { connections.count }

    /// When the next idle check, or accepting again after `EMFILE`, is due (`nil`: none).
    var nextDeadline: UInt64? {
        var due: UInt64? = connections.isEmpty ? nil : nextIdleCheck
        if acceptPausedUntil != .max { due = min(due ?? .max, acceptPausedUntil) }
        for index in listeners.indices where listeners[index].retryAt != 0 && !listeners[index].acceptArmed {
            due = min(due ?? .max, listeners[index].retryAt)
        }
        return due
    }

    /// Accepts and reads what the epoll instance reports ready: new connections (while the core
    /// runs), and each ready connection's bytes, framed, as far as the core takes them.
    ///
    /// - Returns: whether something was read, or left unread for want of room in the core
    ///   (more is probably waiting).
    mutating func service(core: inout RelayCore, now: UInt64) -> Bool {
        guard poll.isOpen else { return false }
        if accepting && core.phase != .running { stopAccepting() }
        let ready = poll.takeReady()
        var more = ready == poll.capacity
        for index in 0..<ready {
            let token = poll.token(at: index)
            if token & Self.listenerTokenBit != 0 {
                accept(listener: UInt32(truncatingIfNeeded: token), core: &core, now: now)
                continue
            }
            let position = Int(UInt32(truncatingIfNeeded: token))
            let serial = UInt32(truncatingIfNeeded: token >> 32)
            // A connection moved or closed earlier in this batch: level-triggered, its bytes
            // are reported again at the next call.
            guard position < connections.count, connections[position].serial == serial else {
                more = true
                continue
            }
            if read(at: position, core: &core, now: now) { more = true }
        }
        return more
    }

    /// Closes the connections silent for `--tcp-idle-timeout` and counts them; at most every
    /// `idleCheckInterval`.
    mutating func closeIdle(core: inout RelayCore, now: UInt64) {
        if now >= acceptPausedUntil { resumeAccepting() }
        guard now >= nextIdleCheck else { return }
        nextIdleCheck = now &+ idleCheckInterval
        var index = connections.count - 1
        while index >= 0 {
            if now &- connections[index].lastActivity >= idleTimeoutNanoseconds {
                close(at: index, reason: .tcpConnectionsClosedIdle, core: &core)
            }
            index -= 1
        }
    }

    /// Adds TCP listener `id` (a reload), naming it in `core`; the epoll instance is opened if
    /// the worker had none.
    ///
    /// - Returns: `false` when it could not be watched (it closes; the reload is refused).
    mutating func add(id: UInt32, socket: consuming TCPListenSocket, core: inout RelayCore) -> Bool {
        guard accepting else { return false }
        if !poll.isOpen {
            do throws(SystemCallError) { poll = try EventPoll(capacity: 256) } catch { return false }
            buffer = StreamReadBuffer(capacity: maximumLineBytes)
        }
        // While the epoll path's accepting is paused it joins the set with the others, when
        // they are put back.
        if !completionAccepts && acceptPausedUntil == .max {
            do throws(Errno) { try poll.add(socket.pollDescriptor, token: Self.listenerTokenBit | UInt64(id)) } catch { return false }
        }
        core.nameListener(id: id, label: Self.label(socket.localAddress))
        listeners.append(TCPIngestListener(id: id, socket: socket))
        if nextIdleCheck == .max { nextIdleCheck = MonotonicClock.nanoseconds() &+ idleCheckInterval }
        return true
    }

    /// Closes TCP listener `id`'s listening socket (a reload removed it): no new connection is
    /// accepted on it; the connections it accepted stay open until they close, idle out, or
    /// the worker stops.
    mutating func remove(id: UInt32) {
        guard let index = listenerIndex(of: id) else { return }
        retire(listeners.remove(at: index))
    }

    /// Closes the listening sockets: no connection is accepted any more (those waiting in the
    /// backlog are reset by the kernel as the sockets close).
    mutating func stopAccepting() {
        accepting = false
        while !listeners.isEmpty {
            retire(listeners.removeLast())
        }
    }

    /// Closes a listener taken out of `listeners`; one with a multishot accept armed stops
    /// listening at once (no new connection) and waits in `retiring` for its accept's
    /// cancellation to complete before it closes.
    private mutating func retire(_ listener: consuming TCPIngestListener) {
        // Stopped at once (not only closed: the registry's copy for a takeover would keep it
        // listening), unless another process holds it (a successor's after a takeover,
        // systemd's): shutdown(2) would end it, and reset its backlog, for that process too.
        if registry?.listenersShared != true { listener.socket.stopListening() }
        guard completionAccepts else {
            poll.remove(listener.socket.pollDescriptor)
            return
        }
        guard listener.acceptArmed else { return }
        listener.cancelWanted = true
        retiring.append(listener)
    }

    /// Takes the listening sockets out of the epoll set: the io_uring driver keeps a multishot
    /// accept armed on each instead (`armed(at:)`, `accepted(_:core:now:)`). Called by that
    /// driver before its first wait; the second call does nothing.
    mutating func acceptByCompletions() {
        guard !completionAccepts else { return }
        completionAccepts = true
        for index in listeners.indices { poll.remove(listeners[index].socket.pollDescriptor) }
    }

    /// Whether listener `index` wants its multishot accept armed: none is, and a retry after
    /// `EMFILE` is not pending.
    func wantsAccept(at index: Int, now: UInt64) -> Bool {
        !listeners[index].acceptArmed && listeners[index].retryAt <= now
    }

    /// Listener `index`'s multishot accept was armed.
    mutating func armed(at index: Int) {
        listeners[index].acceptArmed = true
        listeners[index].retryAt = 0
    }

    /// Retiring listener `index`'s cancellation was submitted.
    mutating func cancelSubmitted(at index: Int) { retiring[index].cancelWanted = false }

    /// Whether a multishot accept is armed on any listener, retiring ones included.
    var anyAcceptArmed: Bool {
        if !retiring.isEmpty { return true }
        for index in listeners.indices where listeners[index].acceptArmed { return true }
        return false
    }

    /// Takes one CQE of listener `completion.userData.index`'s multishot accept: a connection
    /// joins the table as `service`'s accepts do (the same limit, the same counters, a listener
    /// retiring included: the kernel took it from the backlog before the cancellation); an
    /// error is counted (`tcp_accept_errors`; out of descriptors or memory, the accept waits
    /// `acceptPauseNanoseconds` before it is armed again); a cancellation is not. At the accept's
    /// end (no `IORING_CQE_F_MORE`) a listener is armed again next turn, a retiring one closes.
    mutating func accepted(_ completion: Completion, core: inout RelayCore, now: UInt64) {
        let id = completion.userData.index
        let live = listenerIndex(of: id)
        if let socket = TCPIngestSocket.accepted(by: completion) {
            adopt(socket, listener: id, core: &core, now: now)
        } else if let live, completion.result != -ECANCELED {
            core.count(.tcpAcceptErrors)
            switch -completion.result {
            case EMFILE, ENFILE, ENOBUFS, ENOMEM:
                listeners[live].retryAt = now &+ Self.acceptPauseNanoseconds
            default:
                break  // a connection aborted before it was taken, …: armed again next turn
            }
        }
        guard !completion.hasMore else { return }
        if let live {
            listeners[live].acceptArmed = false
        } else {
            for index in retiring.indices where retiring[index].id == id {
                // Its accept has ended: the kernel holds the descriptor no more, so it closes.
                _ = retiring.remove(at: index)
                break
            }
        }
    }

    /// Closes every connection (at the end of a stop's drain): the partial line each holds is
    /// counted as dropped (`lines_dropped{reason="tcp_partial"}` and its bytes), and each close
    /// under `reason="stop"`.
    mutating func closeAll(core: inout RelayCore) {
        stopAccepting()
        while !connections.isEmpty { close(at: connections.count - 1, reason: .tcpConnectionsClosedStop, core: &core) }
    }

    /// Whether nothing is open any more (no listening socket, no connection).
    var isClosed: Bool { listeners.isEmpty && connections.isEmpty }

    /// Accepts what waits on listener `id`: up to `acceptsPerService`; over this worker's share
    /// of `--tcp-max-connections` a connection is accepted and closed at once, and counted.
    private mutating func accept(listener id: UInt32, core: inout RelayCore, now: UInt64) {
        guard accepting, let index = listenerIndex(of: id) else { return }
        for _ in 0..<Self.acceptsPerService {
            switch listeners[index].socket.accept() {
            case .none:
                return
            case .failed(let error):
                core.count(.tcpAcceptErrors)
                switch error.rawValue {
                case EMFILE, ENFILE, ENOBUFS, ENOMEM:
                    // The connection stays in the listen queue until a descriptor frees up.
                    pauseAccepting(now: now)
                default:
                    break  // this connection's own failure (aborted before it was taken)
                }
                return
            case .connection(let socket):
                adopt(socket, listener: id, core: &core, now: now)
            }
        }
    }

    /// Takes the listening sockets out of the epoll set until `acceptPauseNanoseconds` from
    /// `now` (`closeIdle` puts them back).
    private mutating func pauseAccepting(now: UInt64) {
        guard acceptPausedUntil == .max else { return }
        acceptPausedUntil = now &+ Self.acceptPauseNanoseconds
        for index in listeners.indices { poll.remove(listeners[index].socket.pollDescriptor) }
    }

    /// Puts the listening sockets back into the epoll set after a pause; one that cannot be
    /// added (out of memory) is tried again after another pause.
    private mutating func resumeAccepting() {
        acceptPausedUntil = .max
        guard accepting, !completionAccepts else { return }
        for index in listeners.indices {
            let listener = listeners[index].id
            do throws(Errno) { try poll.add(listeners[index].socket.pollDescriptor, token: Self.listenerTokenBit | UInt64(listener)) } catch {
                acceptPausedUntil = MonotonicClock.nanoseconds() &+ Self.acceptPauseNanoseconds
            }
        }
    }

    /// Adds a connection accepted on listener `id` to the table and the epoll set; over this
    /// worker's share of `--tcp-max-connections` it is closed at once and counted refused.
    private mutating func adopt(_ socket: consuming TCPIngestSocket, listener id: UInt32, core: inout RelayCore, now: UInt64) {
        guard connections.count < maximumConnections else {
            // Closed as it goes out of scope: the client sees its connection end at once.
            _ = consume socket
            core.count(.tcpConnectionsRefused, listener: id)
            return
        }
        let serial = nextSerial & 0x7FFF_FFFF
        nextSerial &+= 1
        do throws(Errno) { try poll.add(socket.pollDescriptor, token: Self.token(position: connections.count, serial: serial)) } catch {
            core.count(.tcpAcceptErrors)
            return
        }
        connections.append(TCPIngestConnection(
            socket: socket, framer: StreamLineFramer(maximumLineBytes: maximumLineBytes), listener: id, serial: serial,
            lastActivity: now))
        core.count(.tcpConnectionsAccepted, listener: id)
    }

    private func listenerIndex(of id: UInt32) -> Int? {
        for index in listeners.indices where listeners[index].id == id { return index }
        return nil
    }

    private static func token(position: Int, serial: UInt32) -> UInt64 { UInt64(serial) << 32 | UInt64(position) }

    /// Reads connection `position` a few times, framing each read into the core.
    ///
    /// - Returns: whether it may hold more (its reads were cut short, or the core had no room).
    private mutating func read(at position: Int, core: inout RelayCore, now: UInt64) -> Bool {
        for _ in 0..<Self.readsPerService {
            guard core.canAcceptDatagram else { return true }
            // What one read completes (the partial line held) and the whole lines after it
            // add up to at most one datagram's worth (`maximumLineBytes`, and a completed
            // line's newline): the core's reserve for one datagram covers them.
            let limit = max(1, maximumLineBytes - connections[position].framer.partialByteCount)
            let result = connections[position].socket.read(into: buffer, limit: limit)
            switch result {
            case .bytes(let count):
                connections[position].lastActivity = now
                let listener = connections[position].listener
                let outcome = Self.frame(buffer, count: count, into: &connections[position].framer, listener: listener, core: &core, now: now)
                if outcome == .lineTooLong {
                    close(at: position, reason: .tcpConnectionsClosedTooLong, core: &core)
                    return false
                }
            case .wouldBlock:
                return false
            case .closed:
                let listener = connections[position].listener
                // A client's last line need not end with a newline: it is relayed as it is.
                connections[position].framer.finish { line in
                    core.receive(.datagram(length: line.byteCount), line, listener: listener, now: now)
                }
                close(at: position, reason: .tcpConnectionsClosedPeer, core: &core)
                return false
            case .failed(let error):
                close(at: position, reason: error.rawValue == ECONNRESET ? .tcpConnectionsClosedPeer : .tcpConnectionsClosedError, core: &core)
                return false
            }
        }
        return true
    }

    /// Closes connection `position`, counting why and the partial line it still held; the last
    /// connection takes its place in the table (its epoll token is updated).
    private mutating func close(at position: Int, reason: ListenerCounter, core: inout RelayCore) {
        let held = connections[position].framer.partialByteCount
        if held > 0 {
            core.count(.linesDroppedTCPPartial)
            core.count(.tcpBytesDroppedPartial, by: UInt64(held))
        }
        core.count(reason, listener: connections[position].listener)
        let last = connections.count - 1
        if position != last { connections.swapAt(position, last) }
        let closed = connections.removeLast()
        poll.remove(closed.socket.pollDescriptor)
        _ = consume closed
        guard position != last else { return }
        do throws(Errno) {
            try poll.modify(connections[position].socket.pollDescriptor, token: Self.token(position: position, serial: connections[position].serial))
        } catch {
            // Its events would never find it again: it closes rather than hang unread.
            close(at: position, reason: .tcpConnectionsClosedError, core: &core)
        }
    }

    /// Frames the last read's bytes with `framer`, handing each run of complete lines to the
    /// core as a datagram of listener `listener`.
    private static func frame(
        _ buffer: borrowing StreamReadBuffer, count: Int, into framer: inout StreamLineFramer, listener: UInt32, core: inout RelayCore, now: UInt64
    ) -> StreamLineFramer.Outcome {
        buffer.withBytes(count: count) { bytes in
            framer.feed(bytes) { lines in
                core.receive(.datagram(length: lines.byteCount), lines, listener: listener, now: now)
            }
        }
    }
}
