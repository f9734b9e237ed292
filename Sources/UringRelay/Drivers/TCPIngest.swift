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
    /// Its slot in `TCPIngest`'s slot table: the `user_data` index of its multishot receive,
    /// stable while it is in the table (its position is not: the table is compacted).
    let slot: UInt32

    // Reads by completions (io_uring driver), `TCPIngest.relayReceived`:
    /// A multishot receive is armed on it.
    var receiveArmed = false
    /// Its receive is to be cancelled (it was closed while armed).
    var cancelWanted = false
    /// Closed by the relay (counted already) while its receive was armed: its socket closes
    /// after the receive's last CQE, so the kernel never posts for a closed descriptor.
    var closing = false
    /// Its stream ended (the peer closed it, reset it, or a read failed): what it holds
    /// parked is relayed first, then it closes.
    var end: StreamEnd?
    /// It waits in the ready queue.
    var queued = false
    /// Its received buffers not yet relayed, oldest first (a list through
    /// `TCPIngest.parkedNext`), and the bytes of the first already relayed.
    var firstParked = TCPIngest.noBuffer
    var lastParked = TCPIngest.noBuffer
    var parkedOffset = 0
}

/// How a TCP ingest connection's stream ended, as its multishot receive reported it.
enum StreamEnd {
    /// The peer closed its side (`res` 0): its last line is relayed even without `\n`.
    case closed
    /// The peer reset the connection (`ECONNRESET`): counted as a peer close.
    case reset
    /// Another read error: counted under `reason="error"`.
    case failed
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
    /// Each slot's position in `connections` (-1: free). A slot is freed only when its
    /// connection leaves the table, after its receive's last CQE.
    private var slotPositions: [Int32] = []
    private var freeSlots: [UInt32] = []
    /// The io_uring driver reads the connections with multishot receives into `streamBuffers`
    /// (`readByCompletions`): the connections are not in the epoll set.
    private(set) var completionReads = false
    /// Its receives are armed with `IORING_RECVSEND_BUNDLE`.
    private(set) var bundles = false
    /// The TCP receive group (io_uring driver; none under the portable driver).
    private var streamBuffers = StreamBufferRing()
    /// Per buffer id: the next parked buffer of the same connection, and its bytes.
    private var parkedNext: [UInt16] = []
    private var parkedLength: [Int32] = []
    /// Slots of the connections with parked bytes or an end to relay, in turn order.
    private var ready = SlotQueue()
    /// Multishot receives armed (closing connections' included).
    private(set) var receivesArmed = 0
    /// Connections closing (counted, in the table until their receive's last CQE).
    private var closingCount = 0
    /// Some connection may want its receive armed, or cancelled.
    private var armScanWanted = false
    private var cancelScanWanted = false
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
    /// Reads of one connection per `service` before the others get their turn (and, reading
    /// by completions, pieces of its parked bytes per visit).
    private static let readsPerService = 4
    /// Connections visited per `relayReceived` (as many as one epoll `service` reports).
    private static let visitsPerTurn = 1024
    /// No buffer (the end of a parked list).
    static let noBuffer = UInt16.max
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

    /// How many connections are open (not counting those closed and waiting for their
    /// receive's end).
    var openConnections: Int { connections.count - closingCount }

    /// When the next idle check, or accepting again after `EMFILE`, is due (`nil`: none).
    @inline(__always)
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
        if accepting && core.phase != .running { stopAccepting(core: &core, now: now) }
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
            if !connections[index].closing && now &- connections[index].lastActivity >= idleTimeoutNanoseconds {
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
    /// accepted on it once those already waiting are taken (`retire`); the connections it
    /// accepted stay open until they close, idle out, or the worker stops.
    mutating func remove(id: UInt32, core: inout RelayCore, now: UInt64) {
        guard let index = listenerIndex(of: id) else { return }
        retire(listeners.remove(at: index), core: &core, now: now)
    }

    /// Closes the listening sockets: no connection is accepted any more once those already
    /// waiting in their backlogs are taken (`retire`), so a stop's drain reads them too.
    @inline(never)  // once per worker and stop: kept out of the worker loop's code
    mutating func stopAccepting(core: inout RelayCore, now: UInt64) {
        accepting = false
        while !listeners.isEmpty {
            retire(listeners.removeLast(), core: &core, now: now)
        }
    }

    /// Connections taken from a listening socket's backlog as it stops listening, at most.
    private static let backlogTakenAtRetire = 65_536

    /// Closes a listener taken out of `listeners`; one with a multishot accept armed stops
    /// listening at once (no new connection) and waits in `retiring` for its accept's
    /// cancellation to complete before it closes.
    ///
    /// Stopping a listening socket resets the connections still in its backlog, with the bytes
    /// their clients sent and the kernel acknowledged: they are taken first, as `service`'s
    /// accepts take them (over `--tcp-max-connections` refused and counted), and read like the
    /// others. One that completes its handshake between the last accept and the stop is reset
    /// (its client sees it), as one after it is refused.
    private mutating func retire(_ listener: consuming TCPIngestListener, core: inout RelayCore, now: UInt64) {
        // Stopped at once (not only closed: the registry's copy for a takeover would keep it
        // listening), unless another process holds it (a successor's after a takeover,
        // systemd's): shutdown(2) would end it, and reset its backlog, for that process too.
        if registry?.listenersShared != true {
            takeBacklog(of: listener, core: &core, now: now)
            listener.socket.stopListening()
        }
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
    @inline(never)  // out of the driver's completion loop, which the datagrams' completions share
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
    mutating func closeAll(core: inout RelayCore, now: UInt64) {
        stopAccepting(core: &core, now: now)
        // From the end: a connection that leaves the table at once is replaced by one already
        // closed, or closing.
        var index = connections.count - 1
        while index >= 0 {
            if index < connections.count && !connections[index].closing {
                close(at: index, reason: .tcpConnectionsClosedStop, core: &core)
            }
            index -= 1
        }
    }

    /// Counts, as the worker ends (after `closeAll`, before its counters are taken), what the
    /// connections still in the table (closed, their receive's end not come: a stop out of
    /// time, a failed wait) hold unread in their sockets: they close with the ring, after the
    /// counters are taken. With `IORING_SETUP_DEFER_TASKRUN` no receive takes bytes from them
    /// before then (only inside a wait); without it (before Linux 6.1) one may move some into a
    /// buffer whose completion comes only after the counters: those are missed. Bytes that
    /// reach the sockets after this count are not counted either.
    mutating func countUnreadAtExit(core: inout RelayCore) {
        for position in connections.indices { Self.countUnread(connections[position].socket, core: &core) }
    }

    /// Whether an open connection (not closed by the relay, its stream not ended) has bytes
    /// waiting in its socket (`SIOCINQ`): a system call per connection, asked only by a
    /// draining worker that found nothing else to receive. On the io_uring driver a receive
    /// that ran out of buffers (`-ENOBUFS`) is armed again only at the next wait, and an armed
    /// one takes what waits only inside it: without this a drain could end while connections
    /// still hold what their clients sent before the stop.
    @inline(never)  // a draining worker's rare question: kept out of the worker loop's code
    func holdsUnreadBytes() -> Bool {
        for position in connections.indices where !connections[position].closing && connections[position].end == nil {
            if connections[position].socket.unreadByteCount > 0 { return true }
        }
        return false
    }

    /// Whether nothing is open any more (no listening socket, no connection but those closed
    /// and waiting for their receive's end).
    var isClosed: Bool { listeners.isEmpty && connections.count == closingCount }

    /// Accepts what waits on listener `id`: up to `acceptsPerService`; over this worker's share
    /// of `--tcp-max-connections` a connection is accepted and reset at once, and counted.
    private mutating func accept(listener id: UInt32, core: inout RelayCore, now: UInt64) {
        guard accepting, let index = listenerIndex(of: id) else { return }
        for _ in 0..<Self.acceptsPerService {
            switch take(listeners[index].socket.accept(), listener: id, core: &core, now: now) {
            case .taken:
                continue
            case .none:
                return
            case .outOfResources:
                // The connection stays in the listen queue until a descriptor frees up.
                pauseAccepting(now: now)
                return
            }
        }
    }

    /// What one accept of a listening socket came to (`take`).
    private enum AcceptStep {
        /// A connection was taken (adopted or refused), or this one failed on its own (aborted
        /// before it was taken): the next may follow.
        case taken
        /// Nothing waits.
        case none
        /// Out of descriptors or memory (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`; counted): what
        /// waits stays in the backlog.
        case outOfResources
    }

    /// Adopts the connection `accepted` holds (listener `id`), or counts its failure.
    private mutating func take(_ accepted: consuming TCPListenSocket.Accepted, listener id: UInt32, core: inout RelayCore, now: UInt64) -> AcceptStep {
        switch consume accepted {
        case .none:
            return .none
        case .failed(let error):
            core.count(.tcpAcceptErrors)
            switch error.rawValue {
            case EMFILE, ENFILE, ENOBUFS, ENOMEM: return .outOfResources
            default: return .taken
            }
        case .connection(let socket):
            adopt(socket, listener: id, core: &core, now: now)
            return .taken
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

    /// Accepts every connection waiting in `listener`'s backlog (at most
    /// `backlogTakenAtRetire`), as it is about to stop listening.
    private mutating func takeBacklog(of listener: borrowing TCPIngestListener, core: inout RelayCore, now: UInt64) {
        for _ in 0..<Self.backlogTakenAtRetire {
            // Out of descriptors or memory, what is left is reset with the backlog.
            guard take(listener.socket.accept(), listener: listener.id, core: &core, now: now) == .taken else { return }
        }
    }

    /// Adds a connection accepted on listener `id` to the table and the epoll set; over this
    /// worker's share of `--tcp-max-connections` it is reset at once and counted refused.
    private mutating func adopt(_ socket: consuming TCPIngestSocket, listener id: UInt32, core: inout RelayCore, now: UInt64) {
        guard connections.count < maximumConnections else {
            // What the client sent before it was taken is never read.
            Self.countUnread(socket, core: &core)
            // A reset, not a FIN: a client that only writes learns at its next write (or read)
            // that nothing it sends is read, rather than after it has closed.
            socket.reset()
            core.count(.tcpConnectionsRefused, listener: id)
            return
        }
        let serial = nextSerial & 0x7FFF_FFFF
        nextSerial &+= 1
        if completionReads {
            // Its multishot receive is armed at the next wait (`armReceives`).
            armScanWanted = true
        } else {
            do throws(Errno) { try poll.add(socket.pollDescriptor, token: Self.token(position: connections.count, serial: serial)) } catch {
                core.count(.tcpAcceptErrors)
                Self.countUnread(socket, core: &core)
                return
            }
        }
        let slot: UInt32
        if let free = freeSlots.popLast() {
            slot = free
        } else {
            slot = UInt32(slotPositions.count)
            slotPositions.append(-1)
        }
        slotPositions[Int(slot)] = Int32(connections.count)
        connections.append(TCPIngestConnection(
            socket: socket, framer: StreamLineFramer(maximumLineBytes: maximumLineBytes), listener: id, serial: serial,
            lastActivity: now, slot: slot))
        core.count(.tcpConnectionsAccepted, listener: id)
    }

    private func listenerIndex(of id: UInt32) -> Int? {
        for index in listeners.indices where listeners[index].id == id { return index }
        return nil
    }

    /// Counts what the kernel received on `socket` and nobody read (`tcp_bytes_dropped{reason="unread"}`),
    /// just before the socket closes.
    private static func countUnread(_ socket: borrowing TCPIngestSocket, core: inout RelayCore) {
        let unread = socket.unreadByteCount
        if unread > 0 { core.count(.tcpBytesDroppedUnread, by: UInt64(unread)) }
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
                    dropLineTooLong(at: position, core: &core)
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

    /// Drops the line longer than `--max-datagram` that connection `position`'s framer refused
    /// and closes the connection (`too_long`). The line is counted as a datagram's line too
    /// long is: received on its listener and dropped `too_long`, so that lines received are
    /// lines forwarded plus lines dropped for TCP as for UDP; what was read of it (and what
    /// followed it in that read) is in `tcp_bytes_dropped{reason="too_long"}`.
    private mutating func dropLineTooLong(at position: Int, core: inout RelayCore) {
        core.count(.linesReceived, listener: connections[position].listener)
        core.count(.linesDroppedTooLong)
        core.count(.tcpBytesDroppedTooLong, by: UInt64(connections[position].framer.discardedByteCount))
        close(at: position, reason: .tcpConnectionsClosedTooLong, core: &core)
    }

    /// Closes connection `position`, counting why and the partial line it still held. Read by
    /// completions, the buffers it had parked go back to the group (bytes received and not yet
    /// framed: counted unread, as what an epoll reader leaves in the socket is when the socket
    /// closes), and with its receive still armed it stays in the table, `closing`, until the
    /// receive's last CQE (its cancellation is submitted at the next wait; what the receive
    /// still takes meanwhile is counted unread too); otherwise it leaves the table now.
    @inline(never)  // once per connection: kept out of the worker loop's code
    private mutating func close(at position: Int, reason: ListenerCounter, core: inout RelayCore) {
        let held = connections[position].framer.partialByteCount
        if held > 0 {
            // A line, if cut: received on its listener and dropped, as any line not relayed.
            core.count(.linesReceived, listener: connections[position].listener)
            core.count(.linesDroppedTCPPartial)
            core.count(.tcpBytesDroppedPartial, by: UInt64(held))
        }
        core.count(reason, listener: connections[position].listener)
        if completionReads {
            core.count(.tcpBytesDroppedUnread, by: UInt64(releaseParked(at: position)))
            if connections[position].receiveArmed {
                connections[position].closing = true
                connections[position].cancelWanted = true
                closingCount += 1
                cancelScanWanted = true
                return
            }
        }
        removeConnection(at: position, core: &core)
    }

    /// Takes connection `position` out of the table (its socket closes, and what the kernel
    /// received on it that was never read is counted unread); the last connection takes its
    /// place (its slot, and its epoll token, follow).
    private mutating func removeConnection(at position: Int, core: inout RelayCore) {
        let last = connections.count - 1
        if position != last { connections.swapAt(position, last) }
        let closed = connections.removeLast()
        // A client's bytes that come after this are refused by the kernel (the client sees
        // its connection reset): the relay never had them.
        Self.countUnread(closed.socket, core: &core)
        if !completionReads { poll.remove(closed.socket.pollDescriptor) }
        if closed.closing { closingCount -= 1 }
        slotPositions[Int(closed.slot)] = -1
        freeSlots.append(closed.slot)
        _ = consume closed
        guard position != last else { return }
        slotPositions[Int(connections[position].slot)] = Int32(position)
        guard !completionReads else { return }
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

/// Reads by completions (io_uring driver): each connection has a multishot `recv` armed into
/// the TCP receive group (`StreamBufferRing`), with receive bundles where the kernel has them.
///
/// A CQE's buffers are *parked* on their connection (a list through `parkedNext`, oldest
/// first) and the connection joins the ready queue; `relayReceived` then frames them into the
/// core in turn, connection after connection, in pieces of at most `--max-datagram` less the
/// partial line held (the core's reserve for one datagram covers what one piece completes),
/// and only while the core can take a datagram. What the core has no room for stays parked,
/// at the exact byte (`parkedOffset`), its buffer not yet back in the group, and is relayed
/// first next turn: nothing is lost or repeated, and a connection's bytes keep their order.
/// A buffer returns to the group once its last byte is framed.
///
/// While buffers are parked the group may run dry: the kernel ends a receive that finds no
/// buffer (`-ENOBUFS`, counted in `tcp_buffer_ring_exhausted`), and the bytes wait in the
/// socket (TCP flow control holds the client). Such a connection is armed again only once its
/// own parked bytes are relayed and the group has a buffer free, so a connection that sends
/// faster than the core takes waits for itself, not for the others.
extension TCPIngest {
    /// Switches this worker's connection reads to multishot receives into `buffers`' group
    /// (taken from the caller, which gets an empty group back); `bundles`: arm them with
    /// `IORING_RECVSEND_BUNDLE`. Called by the io_uring driver before its first wait, before
    /// any connection is accepted; without a registered group, reads stay on epoll.
    mutating func readByCompletions(_ buffers: inout StreamBufferRing, bundles: Bool) {
        guard !completionReads, buffers.isRegistered, connections.isEmpty else { return }
        swap(&streamBuffers, &buffers)
        completionReads = true
        self.bundles = bundles
        parkedNext = Array(repeating: Self.noBuffer, count: streamBuffers.count)
        parkedLength = Array(repeating: 0, count: streamBuffers.count)
        ready = SlotQueue(capacity: streamBuffers.count)
    }

    /// The buffers and size of the TCP receive group (0 when reads go through epoll).
    var receiveGroup: (buffers: Int, bytes: Int) { (streamBuffers.count, streamBuffers.bufferBytes) }

    /// Hands the buffers recycled since the last wait back to the kernel.
    mutating func publishBuffers() { streamBuffers.publish() }

    /// Whether any connection's multishot receive is armed.
    var anyReceiveArmed: Bool { receivesArmed > 0 }

    /// Whether parked bytes (or a stream's end) wait to be relayed.
    var hasReady: Bool { !ready.isEmpty }

    /// The kernel may still write into the receive group (a receive whose end never came):
    /// it stays mapped when this goes away.
    mutating func keepBuffersMapped() { streamBuffers.keepMappedAfterDestruction() }

    /// Arms the multishot receive of each open connection that has none and nothing of its own
    /// parked (after `-ENOBUFS` it waits for its bytes to be relayed first), at most as many
    /// as the group has buffers free (each may take one at once); the others are looked at
    /// again next turn.
    ///
    /// - Throws: `Errno` when the submission queue had no room (the rest are armed next turn).
    mutating func armReceives(on ring: borrowing Ring) throws(Errno) {
        guard completionReads, armScanWanted else { return }
        var budget = streamBuffers.available
        var left = false
        for position in connections.indices
        where !connections[position].receiveArmed && !connections[position].closing && connections[position].end == nil {
            guard connections[position].firstParked == Self.noBuffer, budget > 0 else {
                left = true
                continue
            }
            try ring.armMultishotStreamReceive(
                on: connections[position].socket, buffers: streamBuffers, bundle: bundles,
                userData: UserData(.streamReceive, index: connections[position].slot))
            connections[position].receiveArmed = true
            receivesArmed += 1
            budget -= 1
        }
        armScanWanted = left
    }

    /// Submits the cancellation of the receive of each connection closed while it was armed.
    ///
    /// - Throws: `Errno` when the submission queue had no room (the rest go next turn).
    mutating func submitReceiveCancels(on ring: borrowing Ring) throws(Errno) {
        guard cancelScanWanted else { return }
        for position in connections.indices where connections[position].cancelWanted {
            try ring.cancel(UserData(.streamReceive, index: connections[position].slot), userData: UserData(.cancel))
            connections[position].cancelWanted = false
        }
        cancelScanWanted = false
    }

    /// Takes one CQE of a connection's multishot receive: its buffers are parked on the
    /// connection (or, when it is closing, go straight back); the stream's end or a read error
    /// is noted, to act on once what is parked before it is relayed; `-ENOBUFS` is counted
    /// and the receive armed again later; a cancellation is not counted. At the receive's end
    /// (no `IORING_CQE_F_MORE`) a closing connection leaves the table and its socket closes.
    mutating func received(_ completion: Completion, core: inout RelayCore, now: UInt64) {
        let slot = Int(completion.userData.index)
        guard slot < slotPositions.count, slotPositions[slot] >= 0 else {
            assertionFailure("a receive completion for slot \(slot), which holds no connection")
            return
        }
        let position = Int(slotPositions[slot])
        if completion.result > 0 {
            core.count(.tcpReceiveCompletions)
            if let first = completion.bufferID, let taken = streamBuffers.take(firstID: first, result: completion.result, bundle: bundles) {
                core.count(.tcpReceiveBuffers, by: UInt64(taken))
                let dropped = park(taken, bytes: Int(completion.result), at: position)
                if dropped > 0 { core.count(.tcpBytesDroppedUnread, by: UInt64(dropped)) }
                connections[position].lastActivity = now
            } else {
                // Numbers no receive can give: the stream cannot be followed any more.
                assertionFailure("receive completion \(completion.result) bytes, flags \(completion.flags)")
                if connections[position].end == nil { connections[position].end = .failed }
            }
        } else if completion.result == 0 {
            if connections[position].end == nil { connections[position].end = .closed }
        } else {
            switch -completion.result {
            case ENOBUFS:
                core.count(.tcpBufferRingExhausted)
            case ECANCELED:
                break  // closed by the relay (`close(at:reason:core:)`)
            case ECONNRESET:
                if connections[position].end == nil { connections[position].end = .reset }
            default:
                if connections[position].end == nil { connections[position].end = .failed }
            }
        }
        if !connections[position].closing && (connections[position].firstParked != Self.noBuffer || connections[position].end != nil) {
            enqueue(at: position)
        }
        guard !completion.hasMore else { return }
        connections[position].receiveArmed = false
        receivesArmed -= 1
        if connections[position].closing {
            removeConnection(at: position, core: &core)
        } else if connections[position].end == nil {
            armScanWanted = true
        }
    }

    /// Parks the `taken` buffers the last `take` covered (`bytes` in all) on connection
    /// `position`, after what it holds already; a closing connection's go straight back.
    ///
    /// - Returns: the bytes that went straight back (never to be read).
    private mutating func park(_ taken: Int, bytes: Int, at position: Int) -> Int {
        let size = streamBuffers.bufferBytes
        guard !connections[position].closing else {
            for index in 0..<taken { streamBuffers.recycle(streamBuffers.takenID(index, of: taken)) }
            return bytes
        }
        for index in 0..<taken {
            let id = streamBuffers.takenID(index, of: taken)
            parkedNext[Int(id)] = Self.noBuffer
            parkedLength[Int(id)] = Int32(min(size, bytes - index * size))
            let last = connections[position].lastParked
            if last == Self.noBuffer {
                connections[position].firstParked = id
                connections[position].parkedOffset = 0
            } else {
                parkedNext[Int(last)] = id
            }
            connections[position].lastParked = id
        }
        return 0
    }

    /// Gives connection `position`'s parked buffers back to the group.
    ///
    /// - Returns: the bytes they held that were not yet framed.
    private mutating func releaseParked(at position: Int) -> Int {
        var unframed = -connections[position].parkedOffset
        var id = connections[position].firstParked
        while id != Self.noBuffer {
            let next = parkedNext[Int(id)]
            unframed += Int(parkedLength[Int(id)])
            streamBuffers.recycle(id)
            id = next
        }
        connections[position].firstParked = Self.noBuffer
        connections[position].lastParked = Self.noBuffer
        connections[position].parkedOffset = 0
        return max(0, unframed)
    }

    private mutating func enqueue(at position: Int) {
        guard !connections[position].queued else { return }
        connections[position].queued = true
        ready.append(connections[position].slot)
    }

    /// Relays the parked bytes of the ready connections, in turn (`readsPerService` pieces per
    /// visit), while the core can take a datagram; a stream that ended once its bytes are
    /// relayed closes (a peer's close relays its last line even without `\n`).
    ///
    /// - Returns: whether some are still waiting (the core ran out of room, or the turn's
    ///   visits were used up).
    mutating func relayReceived(core: inout RelayCore, now: UInt64) -> Bool {
        guard completionReads else { return false }
        var visits = 0
        while visits < Self.visitsPerTurn, let slot = ready.first {
            guard core.canAcceptDatagram else { return true }
            ready.removeFirst()
            visits += 1
            let position = Int(slotPositions[Int(slot)])
            // A stale entry: the connection left the table (its slot may serve another now).
            guard position >= 0, connections[position].queued else { continue }
            connections[position].queued = false
            guard !connections[position].closing else { continue }
            if relayParked(at: position, core: &core, now: now) { enqueue(at: position) }
        }
        return !ready.isEmpty
    }

    /// Frames connection `position`'s parked bytes into the core, at most `readsPerService`
    /// pieces, each at most `--max-datagram` less the partial line held.
    ///
    /// - Returns: whether it still has bytes parked, or an end to act on.
    private mutating func relayParked(at position: Int, core: inout RelayCore, now: UInt64) -> Bool {
        let listener = connections[position].listener
        for _ in 0..<Self.readsPerService {
            guard core.canAcceptDatagram else { return true }
            let id = connections[position].firstParked
            guard id != Self.noBuffer else {
                guard let end = connections[position].end else { return false }
                switch end {
                case .closed:
                    // A client's last line need not end with a newline: it is relayed as it is.
                    connections[position].framer.finish { line in
                        core.receive(.datagram(length: line.byteCount), line, listener: listener, now: now)
                    }
                    close(at: position, reason: .tcpConnectionsClosedPeer, core: &core)
                case .reset:
                    close(at: position, reason: .tcpConnectionsClosedPeer, core: &core)
                case .failed:
                    close(at: position, reason: .tcpConnectionsClosedError, core: &core)
                }
                return false
            }
            let offset = connections[position].parkedOffset
            let length = Int(parkedLength[Int(id)])
            // What one piece completes (the partial line held) and the whole lines after it add
            // up to at most one datagram's worth: the core's reserve for one datagram covers them.
            let limit = max(1, maximumLineBytes - connections[position].framer.partialByteCount)
            let end = min(length, offset + limit)
            let outcome = Self.frame(
                streamBuffers, bufferID: id, range: offset..<end, into: &connections[position].framer, listener: listener, core: &core, now: now)
            if end == length {
                let next = parkedNext[Int(id)]
                connections[position].firstParked = next
                if next == Self.noBuffer { connections[position].lastParked = Self.noBuffer }
                connections[position].parkedOffset = 0
                streamBuffers.recycle(id)
            } else {
                connections[position].parkedOffset = end
            }
            if outcome == .lineTooLong {
                dropLineTooLong(at: position, core: &core)
                return false
            }
        }
        return connections[position].firstParked != Self.noBuffer || connections[position].end != nil
    }

    /// Frames `range` of parked buffer `bufferID` with `framer`, handing each run of complete
    /// lines to the core as a datagram of listener `listener`.
    private static func frame(
        _ buffers: borrowing StreamBufferRing, bufferID: UInt16, range: Range<Int>, into framer: inout StreamLineFramer,
        listener: UInt32, core: inout RelayCore, now: UInt64
    ) -> StreamLineFramer.Outcome {
        buffers.withBytes(of: bufferID, in: range) { bytes in
            framer.feed(bytes) { lines in
                core.receive(.datagram(length: lines.byteCount), lines, listener: listener, now: now)
            }
        }
    }
}

/// A first-in first-out queue of connection slots, grown (never per read) when full.
struct SlotQueue {
    private var storage: [UInt32]
    private var head = 0
    private(set) var count = 0

    init(capacity: Int = 1) { storage = Array(repeating: 0, count: max(1, capacity)) }

    var isEmpty: Bool { count == 0 }

    var first: UInt32? { count > 0 ? storage[head] : nil }

    mutating func append(_ slot: UInt32) {
        if count == storage.count {
            // Unrolled into a larger array, oldest first.
            var grown = Array(repeating: UInt32(0), count: storage.count * 2)
            for index in 0..<count { grown[index] = storage[(head + index) % storage.count] }
            storage = grown
            head = 0
        }
        storage[(head + count) % storage.count] = slot
        count += 1
    }

    mutating func removeFirst() {
        precondition(count > 0)
        head = (head + 1) % storage.count
        count -= 1
    }
}
