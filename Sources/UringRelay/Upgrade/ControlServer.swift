import Glibc
import Logging
import RelayKernel
import Synchronization

/// The relay's control socket (`--control-socket PATH`): a Unix stream socket, mode 0600, on
/// which a new relay process takes the listening sockets over (`statsrelay run --takeover`).
///
/// It runs on a thread of its own and serves one takeover at a time; a connection made while
/// one is under way is refused (`busy`). The old side of the handshake (docs/operations.md,
/// "Upgrade"):
/// 1. read `takeover` (what the new process would run); refuse it if its thread count or
///    listeners differ from the running ones, or the relay is stopping;
/// 2. send `offer`, then per listener one `sockets` frame carrying every worker's socket;
/// 3. wait for `ready`: until then nothing here changes, and `failed`, a closed connection,
///    garbage or silence past `readyTimeoutMilliseconds` leave this relay running as it was
///    (a successor still connected is told so: `refused code=busy`);
/// 4. on `ready`: from protocol version 4, answer `stopping`; if that answer cannot be sent,
///    the successor never learns it owns the sockets (it leaves them alone and exits), so this
///    relay keeps running as in 3. Then the listeners stay marked shared for good (from the
///    offer on: the stop closes them as they are), give up the path (closed, removed if still
///    this socket's), and fire `handedOver`: the caller stops the relay and, once every batch
///    is sent, calls `finishHandOver`, which sends `done`.
///
/// Nothing read from the wire is logged but a verb it knows and a reason cut to 200 printable
/// characters (`TakeoverMessage.loggable`).
public final class ControlServer: Sendable {
    /// The path served.
    public let path: String
    /// Fired once a successor is relaying on the sockets: stop the relay (handed over).
    public let handedOver: WakeupEvent
    private let listener: Mutex<UnixStreamSocket?>
    /// The counters the relay finished with, for `done` (set by `finishHandOver`).
    private let finalCounters = Mutex<RelayCounters?>(nil)
    private let finished: WakeupEvent
    private let successorPID = Atomic<Int32>(0)
    private let stopEvent: WakeupEvent
    private let thread = Mutex<WorkerThreadHandle?>(nil)
    private let relay: Relay
    private let logger: Logger
    private let readyTimeoutMilliseconds: Int32
    private let messageTimeoutMilliseconds: Int32

    /// Binds the control socket at `path` (a file left by a relay that died is replaced; a
    /// socket a running relay serves is refused).
    ///
    /// - Parameters:
    ///   - readyTimeoutMilliseconds: how long a successor may take, from the offer, to start
    ///     its workers and say `ready` (the command passes `readyTimeoutFromEnvironment`).
    ///   - messageTimeoutMilliseconds: how long a peer may take to send one whole message.
    /// - Throws: `SystemCallError` for the socket, its bind (with the reason and a hint), or
    ///   the events.
    public init(
        path: String, relay: Relay, logger: Logger, readyTimeoutMilliseconds: Int32 = 30_000, messageTimeoutMilliseconds: Int32 = 5_000
    ) throws(SystemCallError) {
        self.path = path
        self.relay = relay
        self.logger = logger
        self.readyTimeoutMilliseconds = readyTimeoutMilliseconds
        self.messageTimeoutMilliseconds = messageTimeoutMilliseconds
        do throws(Errno) {
            handedOver = try WakeupEvent()
            stopEvent = try WakeupEvent()
            finished = try WakeupEvent()
        } catch { throw SystemCallError("eventfd", "control socket", error) }
        listener = Mutex(try UnixStreamSocket.listening(at: path))
    }

    /// The successor's time to say `ready`, in milliseconds: 30 s, or
    /// `STATSRELAY_TAKEOVER_READY_TIMEOUT_MS` when set to a number from 0 to 600 000. A test's
    /// knob (a short wait makes a successor late on purpose), not an operator's setting.
    public static var readyTimeoutFromEnvironment: Int32 {
        guard let text = getenv("STATSRELAY_TAKEOVER_READY_TIMEOUT_MS").map({ String(cString: $0) }),
              let value = Int32(text), (0...600_000).contains(value) else { return 30_000 }
        return value
    }

    /// Starts serving on a thread of its own.
    ///
    /// - Throws: `SystemCallError` when the thread cannot be created.
    public func start() throws(SystemCallError) {
        do throws(Errno) {
            let handle = WorkerThreadHandle(try WorkerThread(name: "statsrelay-ctl", cpu: nil) { [self] _ in serve() })
            thread.withLock { $0 = handle }
        } catch { throw SystemCallError("pthread_create", "control socket", error) }
    }

    /// Stops serving, closes the socket and removes its path if it is still this socket's.
    public func stop() {
        stopEvent.signal()
        let handle = thread.withLock { $0.take() }
        handle?.join()
        closeListener()
    }

    /// The pid of the process that took the sockets over, once `handedOver` fired.
    public var successor: Int32? {
        let pid = successorPID.load(ordering: .acquiring)
        return pid == 0 ? nil : pid
    }

    /// Tells the successor this relay has stopped with `counters` (`done`), closes the
    /// connection and the server's thread; call after the relay's workers have finished.
    public func finishHandOver(_ counters: RelayCounters) {
        finalCounters.withLock { $0 = counters }
        finished.signal()
        let handle = thread.withLock { $0.take() }
        handle?.join()
    }

    /// Sends `done` with the counters `finishHandOver` left (waiting for them until stopped).
    private func sendDone(_ connection: borrowing UnixStreamSocket) {
        var poller = PollSet(descriptors: [PollSet.descriptor(of: finished), PollSet.descriptor(of: stopEvent)])
        while !finished.isSignalled && !stopEvent.isSignalled { try? poller.wait(timeoutNanoseconds: nil) }
        guard let counters = finalCounters.withLock({ $0 }) else { return }
        let dropped = RelayCounter.allCases.filter { $0.name.hasPrefix("statsrelay.lines_dropped.") }.reduce(UInt64(0)) { $0 + counters[$1] }
        let message = TakeoverMessage.done(received: counters[.linesReceived], forwarded: counters[.linesForwarded], dropped: dropped)
        do throws(Errno) { try connection.sendFrame(message.encoded, timeoutMilliseconds: messageTimeoutMilliseconds) } catch {
            logger.warning("takeover: could not tell the new relay this one has finished", metadata: ["error": "\(error)"])
        }
    }

    private func closeListener() {
        listener.withLock { socket in
            socket?.removePathIfOwned()
            socket = nil
        }
    }

    /// The thread's loop: accept, serve one takeover at a time, until stopped or handed over.
    private func serve() {
        guard let descriptor = listener.withLock({ $0?.descriptor }) else { return }
        var poller = PollSet(descriptors: [descriptor, PollSet.descriptor(of: stopEvent)])
        while !stopEvent.isSignalled {
            do throws(Errno) { try poller.wait(timeoutNanoseconds: nil) } catch {
                logger.error("control socket: poll failed; takeovers are off", metadata: ["error": "\(error)"])
                return
            }
            if poller.isReady(1) { return }
            guard poller.isReady(0) else { continue }
            let accepted: UnixStreamSocket?
            do throws(Errno) { accepted = try listener.withLock { socket throws(Errno) in try socket?.accept() } } catch {
                logger.warning("control socket: accept failed", metadata: ["error": "\(error)"])
                continue
            }
            guard let connection = accepted else { continue }
            if session(connection) {
                // Handed over: the path is the successor's to bind once this relay is done.
                closeListener()
                handedOver.signal()
                sendDone(connection)
                return
            }
        }
    }

    /// Serves one takeover on `connection`; whether the sockets were handed over (then the
    /// caller keeps the connection for `done`).
    private func session(_ connection: borrowing UnixStreamSocket) -> Bool {
        let peer = connection.peer
        var metadata: Logger.Metadata = ["peer_pid": "\(peer?.pid ?? 0)"]
        let request: TakeoverMessage
        switch read(connection, timeoutMilliseconds: messageTimeoutMilliseconds) {
        case .success(let message): request = message
        case .failure(let problem):
            metadata["error"] = "\(problem)"
            logger.warning("control socket: a connection sent no takeover request; ignored", metadata: metadata)
            try? connection.sendFrame(TakeoverMessage.refused(code: .malformed, reason: "\(problem)").encoded, timeoutMilliseconds: 1_000)
            return false
        }
        guard case .takeover(let version, let threads, let listeners) = request else {
            metadata["verb"] = "\(request.verb)"
            logger.warning("control socket: expected a takeover request; ignored", metadata: metadata)
            try? connection.sendFrame(TakeoverMessage.refused(code: .malformed, reason: "expected takeover, got \(request.verb)").encoded, timeoutMilliseconds: 1_000)
            return false
        }
        func refuse(_ refusal: Refusal) -> Bool {
            metadata["reason"] = "\(TakeoverMessage.loggable(refusal.reason))"
            logger.warning("takeover refused: this relay keeps running", metadata: metadata)
            try? connection.sendFrame(TakeoverMessage.refused(code: refusal.code, reason: refusal.reason).encoded, timeoutMilliseconds: 1_000)
            return false
        }
        // The listener set stays as offered until the takeover fails, or for good.
        guard relay.listenerRegistry.takeListenerSet(for: .takeover) else {
            return refuse(Refusal(code: .busy, reason: "a reload is changing the listeners; try again once it is done"))
        }
        let offer: [OfferedListener]
        switch prepareOffer(version: version, threads: threads, listeners: listeners) {
        case .success(let prepared): offer = prepared
        case .failure(let refusal):
            relay.listenerRegistry.releaseListenerSet(from: .takeover)
            return refuse(refusal)
        }
        // From the offer on, another process may hold the sockets: a stop that begins now (a
        // SIGTERM during the handshake) must not connect them to themselves under the new relay.
        relay.listenerRegistry.shareListeners(true)
        // From version 2 on, the kernel drops counted here stop at the counters' values now and
        // the new relay counts from them: no drop of the sockets both relays read is counted
        // twice or not at all.
        // (TCP listening sockets have no such counter.)
        let datagramListeners = offer.filter { !$0.isTCP }
        let frozen = version >= 2
            ? relay.listenerRegistry.freezeKernelDrops(listeners: datagramListeners.map(\.id), copies: datagramListeners.map(\.sockets))
            : nil
        do throws(Errno) {
            let pid = getpid()
            try connection.sendFrame(
                TakeoverMessage.offer(version: version, threads: threads, listeners: offer.count, pid: pid).encoded,
                timeoutMilliseconds: messageTimeoutMilliseconds)
            var datagramIndex = 0
            for (index, listener) in offer.enumerated() {
                // `frozen` has the datagram listeners in offer order.
                var drops: [UInt32?]?
                if !listener.isTCP {
                    drops = frozen?[datagramIndex]
                    datagramIndex += 1
                }
                try connection.sendFrame(
                    TakeoverMessage.sockets(index: index, address: listener.spec, drops: drops).encoded,
                    passing: listener.sockets, timeoutMilliseconds: messageTimeoutMilliseconds)
            }
        } catch {
            metadata["error"] = "\(error)"
            keepListeners()
            // Logged once the listeners are free again: a reload asked on seeing it is not refused.
            logger.warning("takeover abandoned: the sockets could not be sent; this relay keeps running", metadata: metadata)
            return false
        }
        logger.notice("takeover: listening sockets sent; waiting for the new relay to start on them", metadata: metadata)
        var outcome = awaitReady(connection)
        if case .success = outcome, version >= TakeoverMessage.stoppingVersion {
            // The successor owns the sockets only once it has this answer: if it cannot be
            // sent (the successor gave up waiting and shut the connection), the sockets stay
            // this relay's. Sent, it is final: this relay never takes them back.
            do throws(Errno) { try connection.sendFrame(TakeoverMessage.stopping.encoded, timeoutMilliseconds: messageTimeoutMilliseconds) } catch {
                outcome = .failure(.unconfirmed(error))
            }
        }
        switch outcome {
        case .success:
            successorPID.store(peer?.pid ?? -1, ordering: .releasing)
            logger.notice("takeover: the new relay is relaying; this one stops receiving, sends what it took and exits", metadata: metadata)
            return true
        case .failure(let problem):
            metadata["error"] = "\(problem)"
            // The new relay has stopped its workers (or never started them), or will exit
            // without touching the sockets: it owns them only after `stopping` (version 4) or
            // `done`, neither of which it will get. One still waiting is told why at once.
            try? connection.sendFrame(
                TakeoverMessage.refused(code: .busy, reason: "takeover abandoned by the running relay (\(problem)); it keeps running").encoded,
                timeoutMilliseconds: 1_000)
            keepListeners()
            // Logged once the listeners are free again: a reload asked on seeing it is not refused.
            logger.warning("takeover failed in the new relay; this one keeps running", metadata: metadata)
            return false
        }
    }

    /// Takes the listeners back after a takeover that did not happen: no longer shared, every
    /// kernel drop counted again, the listener set free for a reload.
    private func keepListeners() {
        relay.listenerRegistry.shareListeners(false)
        relay.listenerRegistry.thawKernelDrops()
        relay.listenerRegistry.releaseListenerSet(from: .takeover)
    }

    /// One listener offered: its address as the `sockets` frame names it (`tcp:ADDR` for a TCP
    /// ingest listener), its id, and every worker's socket of it, in worker order.
    private struct OfferedListener {
        var spec: String
        var id: UInt32
        var sockets: [SocketBox]
        var isTCP: Bool
    }

    /// Why a takeover was refused.
    private struct Refusal: Error {
        var code: TakeoverMessage.RefusalCode
        var reason: String
    }

    /// Checks a request against the running relay and gathers every worker's socket of each
    /// listener, in the order the request names them: the datagram listeners, then (from
    /// protocol version 3 on) the TCP ingest listeners, named `tcp:ADDR`. The request must name
    /// the running listeners, each once, in any order (`pair`): a reload puts the listeners it
    /// adds after the ones it keeps, so a relay reloaded to its file's listeners may run them in
    /// another order than a new relay started with that file asks for them.
    ///
    /// A request of version 2 or older comes from a relay that takes no TCP listener over: it is
    /// matched against the datagram listeners alone, and the TCP listeners are not offered (that
    /// relay binds its own beside them; what waits in this relay's backlogs is reset as it stops).
    private func prepareOffer(version: Int, threads: Int, listeners: [String]) -> Result<[OfferedListener], Refusal> {
        guard TakeoverMessage.versions.contains(version) else {
            return .failure(Refusal(
                code: .version,
                reason: "protocol version \(version) asked, this relay speaks \(TakeoverMessage.versions.map(String.init).joined(separator: ", "))"))
        }
        let view = relay.handOverView
        guard view.started, !view.stopping else { return .failure(Refusal(code: .busy, reason: "the relay is not running (starting or stopping)")) }
        // systemd's sockets outlive this relay and belong to the unit: a successor would treat
        // them as its own (its stop would close them for the next activation), and systemd
        // would lose its main process.
        guard !relay.listenerRegistry.isHeldElsewhere else {
            return .failure(Refusal(
                code: .mismatch,
                reason: "this relay runs on sockets systemd passed (socket activation): restart the service instead (systemctl restart), which hands them to the new process"))
        }
        guard threads == view.workers else {
            return .failure(Refusal(code: .mismatch, reason: "threads differ: the running relay has \(view.workers) workers, the new one asks for \(threads); every worker owns one socket of each listener"))
        }
        let withTCP = version >= TakeoverMessage.tcpVersion
        // Each running listener as the request may name it (as configured or as bound), and as
        // it is offered (`spec`: as bound).
        var running = zip(zip(view.configured, view.bound), view.ids).map { pair, id in
            RunningListener(configured: pair.0.description, bound: pair.1.description, id: id, isTCP: false)
        }
        if withTCP {
            running += zip(zip(view.tcpConfigured, view.tcpBound), view.tcpIDs).map { pair, id in
                RunningListener(configured: TCPIngest.label(pair.0), bound: TCPIngest.label(pair.1), id: id, isTCP: true)
            }
        }
        let pairing = Self.pair(asked: listeners, running: running.map { (configured: $0.configured, bound: $0.bound) })
        guard pairing.unasked.isEmpty && pairing.unknown.isEmpty else {
            let runningText = running.map { $0.configured == $0.bound ? $0.bound : "\($0.configured) (bound \($0.bound))" }
            var differences: [String] = []
            if !pairing.unknown.isEmpty { differences.append("not running here: \(pairing.unknown.map { listeners[$0] }.joined(separator: ", "))") }
            if !pairing.unasked.isEmpty { differences.append("running but not asked: \(pairing.unasked.map { runningText[$0] }.joined(separator: ", "))") }
            return .failure(Refusal(code: .mismatch, reason: "listeners differ: running \(runningText.joined(separator: ", ")); asked \(listeners.joined(separator: ", ")); \(differences.joined(separator: "; ")); the new relay must ask for the running listeners, each once, in any order (a reload keeps --tcp-port's listener on the address it started on: write it as a tcp:ADDR:PORT listener), or change them with a reload (SIGHUP) after the upgrade"))
        }
        guard threads <= UnixStreamSocket.maximumDescriptorsPerFrame else {
            return .failure(Refusal(code: .mismatch, reason: "more than \(UnixStreamSocket.maximumDescriptorsPerFrame) workers"))
        }
        var offer: [OfferedListener] = []
        for index in pairing.order {
            let listener = running[index]
            guard let sockets = relay.listenerRegistry.sockets(listener: listener.id, workers: threads) else {
                return .failure(Refusal(code: .busy, reason: "listener \(listener.bound) is not open in every worker"))
            }
            offer.append(OfferedListener(spec: listener.bound, id: listener.id, sockets: sockets, isTCP: listener.isTCP))
        }
        if !withTCP && !view.tcpBound.isEmpty {
            logger.warning("takeover in protocol version \(version): the new relay takes no TCP listener over; it binds its own, and connections waiting in this relay's TCP backlogs are reset as it stops")
        }
        return .success(offer)
    }

    /// A running listener as a request may name it: as configured, or as bound (`tcp:ADDR` for
    /// a TCP ingest listener); its id.
    private struct RunningListener {
        var configured: String
        var bound: String
        var id: UInt32
        var isTCP: Bool
    }

    /// Pairs each listener a request asks for with a distinct running one: first those named as
    /// bound (an address only one socket has), then those named as configured (several may
    /// share one, `127.0.0.1:0`), each time the first running listener not yet paired.
    ///
    /// - Returns: `order`, per asked listener the index of its running one (complete only when
    ///   the other two are empty); `unknown`, the asked listeners nothing running matches;
    ///   `unasked`, the running listeners no asked one took.
    static func pair(
        asked: [String], running: [(configured: String, bound: String)]
    ) -> (order: [Int], unknown: [Int], unasked: [Int]) {
        var pairedWith: [Int?] = Array(repeating: nil, count: asked.count)
        var taken = Array(repeating: false, count: running.count)
        for byBound in [true, false] {
            for (askedIndex, name) in asked.enumerated() where pairedWith[askedIndex] == nil {
                guard let runningIndex = running.indices.first(where: { !taken[$0] && (byBound ? running[$0].bound : running[$0].configured) == name }) else {
                    continue
                }
                taken[runningIndex] = true
                pairedWith[askedIndex] = runningIndex
            }
        }
        return (pairedWith.compactMap { $0 }, asked.indices.filter { pairedWith[$0] == nil }, running.indices.filter { !taken[$0] })
    }

    /// Waits for the successor's answer, refusing other connections meanwhile (`busy`).
    private func awaitReady(_ connection: borrowing UnixStreamSocket) -> Result<Void, ReadProblem> {
        guard let descriptor = listener.withLock({ $0?.descriptor }) else { return .failure(.stopped) }
        var poller = PollSet(descriptors: [connection.descriptor, descriptor, PollSet.descriptor(of: stopEvent)])
        let deadline = MonotonicClock.nanoseconds() &+ UInt64(readyTimeoutMilliseconds) * 1_000_000
        while true {
            let now = MonotonicClock.nanoseconds()
            guard now < deadline else { return .failure(.lateReady(milliseconds: readyTimeoutMilliseconds)) }
            do throws(Errno) { try poller.wait(timeoutNanoseconds: deadline - now) } catch { return .failure(.frame(.system(error))) }
            if poller.isReady(2) { return .failure(.stopped) }
            if poller.isReady(1), let other = try? listener.withLock({ socket throws(Errno) in try socket?.accept() }) {
                logger.warning("control socket: a second takeover was refused while one is under way", metadata: ["peer_pid": "\(other.peer?.pid ?? 0)"])
                try? other.sendFrame(TakeoverMessage.refused(code: .busy, reason: "another takeover is under way").encoded, timeoutMilliseconds: 1_000)
            }
            guard poller.isReady(0) else { continue }
            switch read(connection, timeoutMilliseconds: messageTimeoutMilliseconds) {
            case .success(.ready): return .success(())
            case .success(.failed(let reason)): return .failure(.failed(reason))
            case .success(let other): return .failure(.unexpected(other.verb))
            case .failure(let problem): return .failure(problem)
            }
        }
    }

    /// Why a message could not be taken.
    enum ReadProblem: Error, CustomStringConvertible {
        /// No whole frame: closed, timed out, a bad length.
        case frame(UnixStreamSocket.FrameError)
        /// A frame that is no message (its size only: its bytes are never logged).
        case malformed(bytes: Int)
        /// A message out of turn (its verb).
        case unexpected(String)
        /// The new relay said it could not start (its reason, logged cut and printable).
        case failed(String)
        /// No `ready` within the successor's time (`readyTimeoutMilliseconds`).
        case lateReady(milliseconds: Int32)
        /// This relay is stopping.
        case stopped
        /// `ready` came, but `stopping` could not be sent back (version 4).
        case unconfirmed(Errno)

        var description: String {
            switch self {
            case .frame(let error): "\(error)"
            case .malformed(let bytes): "malformed message (\(bytes) bytes)"
            case .unexpected(let verb): "unexpected message '\(verb)'"
            case .failed(let reason): "the new relay failed: \(TakeoverMessage.loggable(reason))"
            case .lateReady(let milliseconds): "no ready within \(milliseconds) ms of the offer"
            case .stopped: "this relay is stopping"
            case .unconfirmed(let error): "ready came, but stopping could not be sent back: \(error)"
            }
        }
    }

    /// Reads one message; sockets a peer sent with it uninvited are closed.
    private func read(_ connection: borrowing UnixStreamSocket, timeoutMilliseconds: Int32) -> Result<TakeoverMessage, ReadProblem> {
        let frame: (payload: [UInt8], sockets: [SocketBox])
        do throws(UnixStreamSocket.FrameError) { frame = try connection.receiveFrame(timeoutMilliseconds: timeoutMilliseconds) } catch {
            return .failure(.frame(error))
        }
        guard let message = TakeoverMessage(decoding: frame.payload) else { return .failure(.malformed(bytes: frame.payload.count)) }
        return .success(message)
    }
}
