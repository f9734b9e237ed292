import Glibc
import RelayKernel

/// One worker's persistent TCP connection to one backend, with the bytes it holds for it
/// (`StreamSendQueue`, bounded by `--tcp-backend-queue`) and the account of its lines.
///
/// The core's packets (each line ending in `\n`) are copied into the queue as they are handed
/// out, so a TCP backend never holds a send slot: a slow or dead one cannot stall the others.
/// The queue is written back to back on the stream in large writes, never waiting: a partial
/// write is resumed at the byte where it stopped.
///
/// ```
///   waiting ──(retry time)──► connecting ──(writable, SO_ERROR 0)──► connected
///      ▲                          │ refused / unreachable /              │ reset, EPIPE,
///      └──── backoff ─────────────┴── no answer in 2 s ◄─────────────────┘ peer closed
/// ```
/// Reconnect backoff: 100 ms after the first failure, doubling each failure after, at most
/// 5 s; back to 100 ms once a write on a new connection is accepted.
///
/// Accounting, every line queued ends exactly once:
/// - *sent* when the backend's kernel acknowledged its last byte (`SIOCOUTQ`, read at most
///   every `confirmIntervalNanoseconds` while lines wait for it): a write the local kernel
///   accepted is not yet a delivery;
/// - *tcp_queue_full* when its packet found no room in the queue (nothing of it is queued);
/// - *tcp_unsent_at_exit* when it was still queued, unwritten, when the worker exited;
/// - *unconfirmed* when it was written and not acknowledged when its connection was let go
///   alive (the worker's exit, a removed backend's link finished, an address change): the
///   kernel may still deliver it, or not.
/// When a connection fails (a write fails, or a look at the socket finds the backend closed
/// or reset it), `SIOCOUTQ` (still readable after a reset) says how many bytes written on it
/// the backend's kernel never acknowledged: the lines ending in them are counted sent and
/// *lost at reset* (a part of sent, as the counters define it). A line cut by the failure
/// (its first bytes written, not its `\n`) is not sent yet: it is written again whole on the
/// next connection. Bytes are kept until acknowledged (or until a line starts after them),
/// which is why the queue bound covers written-but-unacknowledged bytes too.
///
/// ```
///   queue.start   confirmed        linesWritten  written        queue.end
///      │ settled:     │ written, not     │ a line's    │ queued,      │
///      │ acknowledged │ known delivered  │ first bytes │ unwritten    │
/// ─────┴──────────────┴──────────────────┴─────────────┴──────────────┴──
/// ```
/// A peer's FIN or reset is seen without a write: each look at `SIOCOUTQ` that leaves bytes
/// unacknowledged also looks at the socket (`TCPBackendSocket.peerState`: a non-blocking read
/// that throws away and counts whatever the backend sent, so its FIN is not hidden behind a
/// banner), and so does the first write on a connection with nothing outstanding (an idle one
/// the backend may have closed meanwhile), which then goes on a new connection instead.
struct TCPBackendLink: ~Copyable {
    /// Where the connection stands.
    enum State: Equatable {
        /// No connection; the next attempt is at `retryAt`.
        case waiting(retryAt: UInt64)
        /// Connecting since `since`.
        case connecting(since: UInt64)
        /// Connected.
        case connected
    }

    /// The backend's address now.
    private(set) var address: SocketAddress
    private var socket: TCPBackendSocket?
    private var queue: StreamSendQueue
    private(set) var state: State
    /// Bytes the kernel accepted, as a stream offset.
    private var written: UInt64 = 0
    /// Just past the last `\n` written: where the next line starts.
    private var linesWritten: UInt64 = 0
    /// Just past the last line settled (sent, lost or unconfirmed): `linesWritten` less the
    /// lines the backend's kernel has not been seen to acknowledge.
    private var confirmed: UInt64 = 0
    /// Lines written, and lines settled, since the link was made (the lines before
    /// `linesWritten` and before `confirmed`).
    private var writtenLineCount: UInt64 = 0
    private var confirmedLineCount: UInt64 = 0
    /// Where recent writes ended, to confirm lines without reading their bytes again.
    private var marks = WriteMarks()
    /// When `SIOCOUTQ` was last read to confirm lines.
    private var confirmCheckedAt: UInt64 = 0
    /// Where the current connection's stream began.
    private var connectionStart: UInt64 = 0
    /// Failures since a write was last accepted (the backoff's exponent).
    private var failures = 0
    /// The last write found the socket's buffer full: wait for it to be writable.
    private(set) var blocked = false
    /// A `send` SQE on the current connection is in flight (io_uring driver).
    private(set) var sendInFlight = false
    /// Given up (a removed backend out of time): nothing more is connected or written; only
    /// the completion of a send still in flight is awaited, its bytes counted.
    private(set) var isAbandoned = false
    /// Moved (`move`) while a send was in flight: the connection is let go, and `address`
    /// connected, once that send completes.
    private var moveWanted = false
    /// Bumped at every new connection, so a completion of a send on a dead one is recognised.
    private(set) var connectionNumber: UInt16 = 0
    /// This link's number among the worker's links (unique while it lives), for `user_data`.
    let id: UInt16
    /// The connection on which a writability poll is armed (io_uring driver), if any.
    private var pollArmedOn: UInt16?
    /// Whether a full queue may ask the kernel what was acknowledged (`SIOCOUTQ`): once per
    /// turn (`progress`), so a backend that stopped reading costs one `ioctl` a turn, not one
    /// per packet dropped.
    private var mayAskAcknowledged = true
    private let sendBufferBytes: Int?
    private var counts = StreamCounts()
    private var reported = StreamCounts()

    /// The first backoff after a failure.
    static let firstBackoffNanoseconds: UInt64 = 100_000_000
    /// The longest backoff.
    static let maximumBackoffNanoseconds: UInt64 = 5_000_000_000
    /// How long a connection may take before it is given up (and counted as failed).
    static let connectTimeoutNanoseconds: UInt64 = 2_000_000_000
    /// The most bytes one write hands the kernel (a `send` SQE: one contiguous piece).
    static let writeLimit = 256 << 10
    /// How often, at most, a link with lines written and not yet acknowledged reads
    /// `SIOCOUTQ` (and looks at its socket): what a line's confirmation may lag by, and how
    /// often a worker whose backend stopped reading wakes for it.
    static let confirmIntervalNanoseconds: UInt64 = 20_000_000

    /// A link to `address` holding at most `queueBytes`, connecting at once.
    ///
    /// - Parameter sendBufferBytes: `SO_SNDBUF` for its sockets, or `nil` for autotuning.
    init(id: UInt16, address: SocketAddress, queueBytes: Int, sendBufferBytes: Int?, now: UInt64) {
        self.id = id
        self.address = address
        self.sendBufferBytes = sendBufferBytes
        queue = StreamSendQueue(capacity: queueBytes)
        socket = nil
        state = .waiting(retryAt: 0)
        connect(now: now)
    }

    /// Whether bytes wait to be written.
    var hasUnwritten: Bool { written < queue.end }

    /// Whether the worker must be woken when the socket becomes writable: connecting, or
    /// connected with its send buffer full.
    var wantsWritable: Bool {
        if isAbandoned { return false }
        return switch state {
        case .connecting: true
        case .connected: blocked && hasUnwritten && !sendInFlight
        case .waiting: false
        }
    }

    /// The descriptor to poll for writability, while there is a socket.
    var pollDescriptor: Int32? { withSocket { $0.pollDescriptor } }

    /// Lends the socket, while there is one.
    private func withSocket<Result>(_ body: (borrowing TCPBackendSocket) -> Result) -> Result? {
        switch socket {
        case .some(let open): body(open)
        case .none: nil
        }
    }

    /// When the link needs a turn without any I/O: its next connection attempt, or the end of
    /// a connection attempt's time.
    var nextDeadline: UInt64? {
        if isAbandoned { return nil }
        return switch state {
        case .waiting(let retryAt): hasUnwritten ? retryAt : nil
        case .connecting(let since): since &+ Self.connectTimeoutNanoseconds
        case .connected: confirmed < linesWritten ? confirmCheckedAt &+ Self.confirmIntervalNanoseconds : nil
        }
    }

    /// Whether nothing more can come of what is held before an exit: everything is written
    /// and acknowledged, or the backend is not connected (waiting out a backoff: what is
    /// queued is dropped at exit rather than holding the stop).
    var isSettled: Bool {
        if isAbandoned { return !sendInFlight }
        if case .waiting = state { return !sendInFlight }
        return !hasUnwritten && !sendInFlight && confirmed == linesWritten
    }

    /// Queues `slot`'s packet (and a final `\n` if it has none); a packet that does not fit
    /// is dropped and counted (`tcp_queue_full`), lines and bytes.
    @inline(__always)
    mutating func enqueue(slot: Int, of pool: borrowing SendBufferPool) {
        if queue.append(slot: slot, of: pool) != nil { return }
        if mayAskAcknowledged {
            mayAskAcknowledged = false
            releaseAcknowledged()
            if queue.append(slot: slot, of: pool) != nil { return }
        }
        counts.queueFullLines &+= UInt64(pool.lineCount(of: slot))
        counts.queueFullBytes &+= UInt64(pool.length(of: slot))
    }

    /// Moves the connection on: connects when a backoff is over, finishes a connection under
    /// way, and (unless `writes` is false: the io_uring driver writes with SQEs) writes what
    /// is queued, without waiting.
    mutating func progress(now: UInt64, writes: Bool) {
        mayAskAcknowledged = true
        if isAbandoned { return }
        switch state {
        case .waiting(let retryAt):
            guard now >= retryAt, hasUnwritten else { return }
            connect(now: now)
            guard state == .connected else { return }
        case .connecting(let since):
            switch withSocket({ $0.connectionState() }) ?? .failed(Errno(rawValue: EBADF)) {
            case .connecting:
                if now &- since >= Self.connectTimeoutNanoseconds { fail(now: now) }
                return
            case .failed:
                fail(now: now)
                return
            case .connected:
                state = .connected
                counts.connects &+= 1
            }
        case .connected:
            // Nothing outstanding: the backend may have closed the connection since the last
            // write, which the kernel would take and the backend reset.
            if hasUnwritten, !sendInFlight, confirmed == written, peerHasGone() {
                fail(now: now)
                return
            }
        }
        guard writes else { return }
        var rounds = 0
        // A few writes: the queue may wrap, or the kernel may take part of it and then more.
        while hasUnwritten && rounds < 4 {
            rounds += 1
            let from = written
            guard let result = withSocket({ queue.write(from: from, to: $0) }) else { return }
            if result > 0 {
                blocked = false
                accepted(result)
                continue
            }
            if result == -Int(EAGAIN) {
                blocked = true
            } else {
                fail(now: now)
            }
            return
        }
    }

    /// The `user_data` index of this link's requests on its current connection:
    ///
    /// ```
    ///  31              16 15               0
    /// +------------------+------------------+
    /// | link id (16)     | connection (16)  |
    /// +------------------+------------------+
    /// ```
    var requestIndex: UInt32 { UInt32(id) << 16 | UInt32(connectionNumber) }

    /// The bytes for the next `send` SQE (io_uring driver), when one may go: connected, none
    /// in flight, bytes unwritten (one contiguous piece, at most `writeLimit`). Marks the send
    /// in flight.
    mutating func takeWrite() -> (descriptor: Int32, bytes: UnsafeRawBufferPointer)? {
        guard state == .connected, !sendInFlight, !isAbandoned, hasUnwritten, let descriptor = pollDescriptor else { return nil }
        sendInFlight = true
        return (descriptor, queue.unsafeContiguousBytes(from: written, limit: Self.writeLimit))
    }

    /// Takes back `takeWrite` when its SQE could not be had (the submission queue full).
    mutating func writeNotSubmitted() { sendInFlight = false }

    /// Whether a writability poll should be armed (io_uring driver): the link waits for it and
    /// none is armed on this connection.
    var needsPoll: Bool { wantsWritable && pollArmedOn != connectionNumber }

    /// Notes the poll armed on the current connection.
    mutating func pollArmed() { pollArmedOn = connectionNumber }

    /// A writability poll on connection `number` completed: the next `progress` looks again.
    mutating func pollCompleted(connection number: UInt16) {
        if pollArmedOn == number { pollArmedOn = nil }
        if number == connectionNumber { blocked = false }
    }

    /// A `send` SQE on connection `number` completed with `result` (bytes, or `-errno`).
    mutating func writeCompleted(result: Int32, connection number: UInt16, now: UInt64) {
        sendInFlight = false
        guard number == connectionNumber, state == .connected else { return }  // a dead connection's
        if isAbandoned || moveWanted {
            // Ended by `abandon` or a `move`: what it had taken still counts; its EPIPE is no
            // failure (a reset is seen as the connection is let go).
            if result > 0 { accepted(Int(result)) }
            if moveWanted && !isAbandoned { reconnect(now: now) }
            return
        }
        if result > 0 {
            blocked = false
            accepted(Int(result))
        } else if result == -EAGAIN {
            blocked = true
        } else if result != -ECANCELED && result != -EINTR {
            fail(now: now)
        }
    }

    /// The kernel accepted `count` more bytes: the lines they end are written, to be counted
    /// sent once acknowledged (`confirmDelivery`).
    @inline(__always)
    private mutating func accepted(_ count: Int) {
        let end = written &+ UInt64(count)
        let (lines, pastLast) = queue.newlines(from: written, to: end)
        written = end
        counts.writes &+= 1
        failures = 0
        if let pastLast {
            writtenLineCount &+= UInt64(lines)
            linesWritten = pastLast
            marks.append(end: pastLast, lines: writtenLineCount)
        }
    }

    /// Counts as sent the lines the backend's kernel acknowledged since the last look, at
    /// most every `confirmIntervalNanoseconds` while lines wait for it; when some stay
    /// unacknowledged, also looks at the socket, and fails the connection if the backend
    /// closed or reset it (its failure would otherwise show only at a next write, and none
    /// may come: a backend taken down and its traffic rehashed away, or a stop).
    ///
    /// The cost: one `ioctl(SIOCOUTQ)`, and one `recv(MSG_DONTWAIT)` while bytes stay
    /// unacknowledged (more only if the backend sent something), per link and interval;
    /// nothing while every line is settled.
    mutating func confirmDelivery(now: UInt64) {
        guard state == .connected, confirmed < linesWritten, now >= confirmCheckedAt &+ Self.confirmIntervalNanoseconds else { return }
        confirmCheckedAt = now
        if let acknowledged = acknowledgedOffset() { confirm(upTo: acknowledged) }
        // A send in flight on a dead connection fails by itself (`writeCompleted`).
        guard confirmed < linesWritten, !sendInFlight, peerHasGone() else { return }
        fail(now: now)
    }

    /// The stream offset up to which the backend's kernel acknowledged what was written on the
    /// current connection (`SIOCOUTQ`: still readable after a reset), or `nil` when not
    /// connected or the kernel cannot say.
    private func acknowledgedOffset() -> UInt64? {
        guard state == .connected, let unacknowledged = withSocket({ $0.unacknowledgedBytes }) ?? nil else { return nil }
        return written &- UInt64(min(unacknowledged, Int(written &- connectionStart)))
    }

    /// Whether the backend closed or reset the current connection (`TCPBackendSocket.peerState`);
    /// what it sent on it is read, thrown away and counted (`StreamCounts.receivedBytes`).
    private mutating func peerHasGone() -> Bool {
        var discarded: UInt64 = 0
        let found = withSocket { $0.peerState(discarded: &discarded) }
        counts.receivedBytes &+= discarded
        return switch found {
        case .some(.open): false
        case .some(.closed), .some(.failed): true
        case .none: false  // no socket: nothing to look at
        }
    }

    /// Counts as sent the lines whose `\n` is before `acknowledged`, and frees their bytes.
    /// Everything written acknowledged (a backend that keeps up) costs nothing more; else the
    /// write marks go as far as they can, and only the bytes after the last mark reached are
    /// read again (at most one write's, each byte at most once: `confirmed` only grows).
    private mutating func confirm(upTo acknowledged: UInt64) {
        if acknowledged >= linesWritten {
            countSent(through: linesWritten, lineCount: writtenLineCount)
            marks.removeAll()
        } else {
            if let mark = marks.removeThrough(acknowledged) { countSent(through: mark.end, lineCount: mark.lines) }
            if acknowledged > confirmed {
                let (lines, pastLast) = queue.newlines(from: confirmed, to: acknowledged)
                if let pastLast { countSent(through: pastLast, lineCount: confirmedLineCount &+ UInt64(lines)) }
            }
        }
        queue.release(upTo: confirmed)
    }

    /// Counts the lines from `confirmed` to `end` (`lineCount` lines in all up to there) as sent.
    private mutating func countSent(through end: UInt64, lineCount: UInt64) {
        guard end > confirmed else { return }
        counts.sentLines &+= lineCount &- confirmedLineCount
        counts.sentBytes &+= end &- confirmed
        confirmed = end
        confirmedLineCount = lineCount
    }

    /// Settles every line written on the connection being let go: those the backend's kernel
    /// acknowledged are sent; the rest are sent and lost at reset when the connection
    /// `failed`, else unconfirmed (the kernel may still deliver them).
    private mutating func settleConnection(failed: Bool) {
        defer { marks.removeAll() }
        guard confirmed < linesWritten else { return }
        if let acknowledged = acknowledgedOffset() { confirm(upTo: acknowledged) }
        let lines = writtenLineCount &- confirmedLineCount
        let bytes = linesWritten &- confirmed
        if failed {
            counts.sentLines &+= lines
            counts.sentBytes &+= bytes
            counts.lostAtResetLines &+= lines
            counts.lostAtResetBytes &+= bytes
        } else {
            counts.unconfirmedLines &+= lines
        }
        confirmed = linesWritten
        confirmedLineCount = writtenLineCount
    }

    /// Frees the bytes the backend's kernel acknowledged, short of the line being written,
    /// counting their lines sent.
    private mutating func releaseAcknowledged() {
        if let acknowledged = acknowledgedOffset() { confirm(upTo: acknowledged) }
    }

    /// Opens a socket and starts connecting; a failure at once counts and backs off.
    private mutating func connect(now: UInt64) {
        do throws(Errno) {
            let opened = try TCPBackendSocket.connecting(to: address, sendBufferBytes: sendBufferBytes)
            let connected = opened.connectedAtOnce
            socket = consume opened
            connectionNumber &+= 1
            connectionStart = written
            blocked = false
            if connected {
                state = .connected
                counts.connects &+= 1
            } else {
                state = .connecting(since: now)
            }
        } catch {
            socket = nil
            counts.connectionFailures &+= 1
            backOff(now: now)
        }
    }

    /// The connection failed: counts what it never delivered, closes it, and backs off. The
    /// line it cut is written again whole on the next connection.
    private mutating func fail(now: UInt64) {
        settleConnection(failed: true)
        counts.connectionFailures &+= 1
        socket = nil
        written = linesWritten
        queue.release(upTo: max(queue.start, linesWritten))
        blocked = false
        backOff(now: now)
    }

    private mutating func backOff(now: UInt64) {
        let delay = min(Self.firstBackoffNanoseconds << UInt64(min(failures, 16)), Self.maximumBackoffNanoseconds)
        failures += 1
        state = .waiting(retryAt: now &+ delay)
    }

    /// Points the link at a new address (the backend's name resolved elsewhere): the
    /// connection closes (the kernel still delivers what it accepted) and a new one is made;
    /// the queue is kept. A line the old connection had only partly written is written again
    /// whole on the new one.
    ///
    /// With a `send` SQE in flight on the connection (io_uring driver; prepared this turn and
    /// not yet submitted, or waiting in the kernel), the connection is kept until that send's
    /// completion (`writeCompleted`), its writing side shut so the completion comes at once:
    /// the bytes it had the old connection's kernel take are that connection's (sent once
    /// acknowledged, else unconfirmed), never written again. Closing it at once would leave
    /// their completion unaccounted, and an SQE not yet submitted would name a descriptor that
    /// the new connection's socket takes over: its bytes would go to the new address, and
    /// again after it.
    mutating func move(to newAddress: SocketAddress, now: UInt64) {
        address = newAddress
        guard !sendInFlight else {
            moveWanted = true
            endWaitingSend()
            return
        }
        reconnect(now: now)
    }

    /// Lets the connection go (`letConnectionGo`) and connects to `address` at once, keeping
    /// the queue: the end of a `move`.
    private mutating func reconnect(now: UInt64) {
        moveWanted = false
        letConnectionGo()
        socket = nil
        written = linesWritten
        queue.release(upTo: max(queue.start, linesWritten))
        blocked = false
        failures = 0
        connect(now: now)
    }

    /// Gives the link up (a removed backend out of time): no more connecting or writing, and a
    /// `send` waiting in the kernel on the connection is ended (`endWaitingSend`), so its
    /// completion comes soon and the link can be finished without leaving its queue to the
    /// kernel. Idempotent.
    mutating func abandon() {
        guard !isAbandoned else { return }
        isAbandoned = true
        endWaitingSend()
    }

    /// Ends a `send` SQE waiting in the kernel on the current connection for room that a peer
    /// which stopped reading never makes: the socket's writing side is shut down, so the send
    /// fails at once (`EPIPE`) or returns what it had taken; one prepared and not yet
    /// submitted fails as it is submitted. Without it, a DNS move (which connects to the new
    /// address only once that completion comes) and a removed backend's socket and queue would
    /// wait on the kernel for as long as the peer keeps its window shut.
    private func endWaitingSend() {
        if sendInFlight { _ = withSocket { $0.shutDownWriting() } }
    }

    /// At exit: a line the last write cut is offered once more (its rest only, without
    /// waiting), so the backend does not get it cut; what is still queued, unwritten, is
    /// dropped and counted (`tcp_unsent_at_exit`); what was written and not acknowledged is
    /// lost (the backend closed or reset the connection) or unconfirmed (`letConnectionGo`);
    /// the socket closes, and the kernel goes on delivering what it accepted.
    mutating func finish() {
        if state == .connected, !sendInFlight, written > linesWritten, let lineEnd = queue.firstNewline(from: written, to: queue.end) {
            let from = written
            if let result = withSocket({ queue.write(from: from, upTo: lineEnd, to: $0) }), result > 0 { accepted(result) }
        }
        letConnectionGo()
        if linesWritten < queue.end {
            counts.atExitLines &+= UInt64(queue.newlines(from: linesWritten, to: queue.end).count)
            counts.atExitBytes &+= queue.end &- linesWritten
            queue.truncate(at: linesWritten)
        }
        written = linesWritten
        if sendInFlight { queue.keepAllocatedAfterDestruction() }
    }

    /// Settles the lines written on a connection about to be closed while it may stand: one
    /// last `SIOCOUTQ` says which the backend's kernel acknowledged (sent); a look says
    /// whether the backend closed or reset it, unseen (a failure: the rest lost at reset), or
    /// not (the rest unconfirmed).
    private mutating func letConnectionGo() {
        guard state == .connected, confirmed < linesWritten else { return }
        let failed = peerHasGone()
        if failed { counts.connectionFailures &+= 1 }
        settleConnection(failed: failed)
    }

    /// The outcomes since the last call, so each is counted once.
    mutating func takeReport() -> StreamCounts {
        defer { reported = counts }
        return counts - reported
    }
}

/// Where a link's recent writes ended on the stream (just past their last `\n`) and how many
/// lines were written up to there, oldest first: lines are confirmed up to an acknowledged
/// offset by these, reading again only the bytes after the last mark reached. At most
/// `capacity` are kept; a write past that moves the newest mark on (the bytes read again may
/// then be more than one write's).
private struct WriteMarks {
    static let capacity = 16
    private var ends = [UInt64](repeating: 0, count: capacity)
    private var lineCounts = [UInt64](repeating: 0, count: capacity)
    private var first = 0
    private var count = 0

    /// Notes a write that ended lines up to `end`, `lines` lines in all up to there.
    mutating func append(end: UInt64, lines: UInt64) {
        let at = count == Self.capacity ? (first + count - 1) % Self.capacity : (first + count) % Self.capacity
        if count < Self.capacity { count += 1 }
        ends[at] = end
        lineCounts[at] = lines
    }

    /// Removes the marks at or before `offset`, and returns the last of them.
    mutating func removeThrough(_ offset: UInt64) -> (end: UInt64, lines: UInt64)? {
        var last: (end: UInt64, lines: UInt64)?
        while count > 0, ends[first] <= offset {
            last = (ends[first], lineCounts[first])
            first = (first + 1) % Self.capacity
            count -= 1
        }
        return last
    }

    mutating func removeAll() {
        first = 0
        count = 0
    }
}
