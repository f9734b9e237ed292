import CLiburing
import Glibc

/// Health probes over TCP, all run at once with non-blocking sockets and one `poll(2)` loop,
/// so a round takes at most one timeout however many backends there are.
///
/// A probe connects; if it has a request it sends it and reads the reply's first line, and
/// decides as soon as that line is complete, whether or not the server then closes the
/// connection (etsy statsd's management port answers `health` with `health: up` or
/// `health: down` and keeps the connection open for the next command):
///
///     health: up\n          → success
///     health: down\n        → failure, reason `reply: 'health: down'`
///     ^^^^^^^^^^^^ ^^
///     first line   a line ends at `\n` (a `\r` before it is dropped), or at EOF
///
/// Every system call but `close` goes through `systemCall`, which retries `EINTR`; the expected
/// failures of a non-blocking socket (`EINPROGRESS`, `EAGAIN`) are stages, and the others are
/// outcomes, never thrown past `run`.
public enum TCPProbe {
    /// One probe to run.
    public struct Target: Sendable {
        /// Where to connect.
        public var address: SocketAddress
        /// Sent once connected, if any.
        public var request: [UInt8]?
        /// What the reply's first line must be (ignoring a trailing `\r`), if anything.
        public var expect: [UInt8]?

        public init(address: SocketAddress, request: [UInt8]? = nil, expect: [UInt8]? = nil) {
            self.address = address
            self.request = request
            self.expect = expect
        }
    }

    /// `nil` for success, or why the probe failed (`connect: Connection refused (errno 111)`).
    public typealias Outcome = String?

    /// The longest reply line read: a statsd admin port answers in a dozen bytes, so a longer
    /// line is not one and fails without being read further.
    static let maximumReplyBytes = 256
    /// The most bytes of a reply shown in an outcome (and so in the log).
    static let shownReplyBytes = 64

    private enum Stage { case connecting, sending, reading, done }

    /// What a probe not finished when its round was cancelled reports.
    public static let cancelledOutcome = "cancelled: the relay is stopping"

    /// How an outcome starts when this host could not run the probe (out of descriptors,
    /// memory or local ports): it says nothing about the backend, whose state the caller keeps
    /// (`isVerdict`). Counted as a failure, an open-files limit reached by admin connections
    /// marked every backend down and failed the relay open.
    public static let noVerdictPrefix = "no verdict: "

    /// Whether `outcome` says something about the backend (a pass, or a failure it caused).
    public static func isVerdict(_ outcome: Outcome) -> Bool {
        !(outcome?.hasPrefix(noVerdictPrefix) ?? false)
    }

    /// Whether a failed `socket` or `connect` is this host's shortage, not the backend's fault.
    static func isLocalShortage(_ error: Errno) -> Bool {
        switch error.rawValue {
        case EMFILE, ENFILE, ENOBUFS, ENOMEM, EADDRNOTAVAIL: true
        default: false
        }
    }

    /// Runs every probe concurrently and returns their outcomes in order.
    ///
    /// - Parameters:
    ///   - timeoutMilliseconds: the bound for the whole round; a probe not finished by then fails
    ///     with `timed out`. A probe times out only once `poll` has found it not ready with the
    ///     deadline passed: a thread that was not scheduled for a while still takes the answers
    ///     that arrived meanwhile.
    ///   - cancel: ends the round early when signalled (a stop); unfinished probes then report
    ///     `cancelledOutcome`.
    public static func run(_ targets: [Target], timeoutMilliseconds: Int, cancel: WakeupEvent? = nil) -> [Outcome] {
        var outcomes: [Outcome] = Array(repeating: "not run", count: targets.count)
        var descriptors: [Int32] = Array(repeating: -1, count: targets.count)
        var stages: [Stage] = Array(repeating: .done, count: targets.count)
        var replies: [[UInt8]] = Array(repeating: [], count: targets.count)
        // Not through `systemCall`: Linux releases the descriptor even when `close` fails with
        // EINTR, so a retry could close a descriptor another thread has just been given.
        defer { for descriptor in descriptors where descriptor >= 0 { _ = close(descriptor) } }

        for (index, target) in targets.enumerated() {
            let domain = target.address.family == .ipv6 ? AF_INET6 : AF_INET
            let kind = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
            do throws(Errno) {
                descriptors[index] = try systemCall { socket(domain, kind, 0) }
            } catch {
                outcomes[index] = (isLocalShortage(error) ? noVerdictPrefix : "") + "socket: \(error.operatorDescription)"
                continue
            }
            let descriptor = descriptors[index]
            do throws(Errno) {
                _ = try systemCall { target.address.withUnsafeSockaddr { address, length in connect(descriptor, address, length) } }
                stages[index] = target.request == nil ? .done : .sending
                if target.request == nil { outcomes[index] = nil }
            } catch where error.rawValue == EINPROGRESS || error.rawValue == EALREADY {
                // EALREADY: a connect retried after EINTR finds the first one still under way.
                stages[index] = .connecting
            } catch {
                outcomes[index] = (isLocalShortage(error) ? noVerdictPrefix : "") + "connect: \(error.operatorDescription)"
            }
        }

        let deadline = MonotonicClock.nanoseconds() &+ UInt64(max(0, timeoutMilliseconds)) &* 1_000_000
        while true {
            let active = stages.indices.filter { stages[$0] != .done }
            if active.isEmpty { break }
            var pollers = active.map { index in
                pollfd(fd: descriptors[index], events: Int16(stages[index] == .reading ? POLLIN : POLLOUT), revents: 0)
            }
            if let cancel { pollers.append(pollfd(fd: cancel.descriptor, events: Int16(POLLIN), revents: 0)) }
            let ready: Int32
            do throws(Errno) {
                // The wait is computed again on each EINTR retry, so a signal never extends the
                // round; past the deadline it is 0, a last look at what is ready.
                ready = try systemCall {
                    let now = MonotonicClock.nanoseconds()
                    let left = deadline > now ? (deadline - now + 999_999) / 1_000_000 : 0
                    return poll(&pollers, nfds_t(pollers.count), Int32(clamping: left))
                }
            } catch {
                for index in active { outcomes[index] = "poll: \(error.operatorDescription)" }
                break
            }
            if cancel != nil && pollers[active.count].revents != 0 {
                for index in active { outcomes[index] = cancelledOutcome }
                break
            }
            if ready == 0 {
                // Nothing ready: only now does the deadline decide.
                guard MonotonicClock.nanoseconds() < deadline else {
                    for index in active { outcomes[index] = "timed out after \(timeoutMilliseconds)ms" }
                    break
                }
                continue
            }
            for (slot, index) in active.enumerated() where pollers[slot].revents != 0 {
                advance(targets[index], descriptors[index], &stages[index], &outcomes[index], &replies[index])
            }
        }
        return outcomes
    }

    private static func advance(
        _ target: Target, _ descriptor: Int32, _ stage: inout Stage, _ outcome: inout Outcome, _ reply: inout [UInt8]
    ) {
        switch stage {
        case .connecting:
            var error: Int32 = 0
            var length = socklen_t(MemoryLayout<Int32>.size)
            do throws(Errno) {
                _ = try systemCall { getsockopt(descriptor, SOL_SOCKET, SO_ERROR, &error, &length) }
            } catch let failure {
                error = failure.rawValue
            }
            if error != 0 {
                outcome = "connect: \(Errno(rawValue: error).operatorDescription)"
                stage = .done
            } else if target.request != nil {
                stage = .sending
                advance(target, descriptor, &stage, &outcome, &reply)
            } else {
                outcome = nil
                stage = .done
            }
        case .sending:
            let request = target.request ?? []
            do throws(Errno) {
                let sent = try systemCall { request.withUnsafeBytes { send(descriptor, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) } }
                if sent == request.count {
                    stage = .reading
                } else {
                    outcome = "send: short write"
                    stage = .done
                }
            } catch where error.rawValue == EAGAIN {
                return
            } catch {
                outcome = "send: \(error.operatorDescription)"
                stage = .done
            }
        case .reading:
            // Read no further than the longest line allowed, plus one byte to see it is longer.
            var buffer = [UInt8](repeating: 0, count: maximumReplyBytes + 1 - reply.count)
            let count: Int
            do throws(Errno) {
                count = try systemCall { buffer.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress, $0.count, 0) } }
            } catch where error.rawValue == EAGAIN {
                return
            } catch {
                outcome = "recv: \(error.operatorDescription)"
                stage = .done
                return
            }
            reply += buffer.prefix(count)
            if let verdict = judge(reply, expect: target.expect, closed: count == 0) {
                outcome = verdict
                stage = .done
            }
        case .done:
            break
        }
    }

    /// Decides a reply read so far, or returns `nil` while its first line is incomplete.
    ///
    /// - Parameters:
    ///   - reply: the bytes received so far (at most `maximumReplyBytes + 1`).
    ///   - expect: what the first line must be, or `nil` to accept any reply.
    ///   - closed: whether the server closed the connection (EOF), which completes the line.
    /// - Returns: `.some(nil)` for success, `.some(reason)` for a failure, `nil` to read on.
    static func judge(_ reply: [UInt8], expect: [UInt8]?, closed: Bool) -> Outcome? {
        let line: ArraySlice<UInt8>
        if let end = reply.firstIndex(of: UInt8(ascii: "\n")) {
            line = reply[..<end].last == UInt8(ascii: "\r") ? reply[..<(end - 1)] : reply[..<end]
        } else if reply.count > maximumReplyBytes {
            return .some("reply: no line end in the first \(maximumReplyBytes) bytes: \(shown(reply[...]))")
        } else if closed {
            if reply.isEmpty { return .some("reply: connection closed without a reply") }
            line = reply[...]
        } else {
            return nil
        }
        guard let expect, !line.elementsEqual(expect) else { return .some(nil) }
        return .some("reply: \(shown(line))")
    }

    /// A reply as it may be logged: quoted, at most `shownReplyBytes` bytes, printable ASCII
    /// as is and every other byte as `\xNN`, so no wire byte reaches a log unescaped.
    static func shown(_ bytes: ArraySlice<UInt8>) -> String {
        var text = "'"
        for byte in bytes.prefix(shownReplyBytes) {
            if (0x20..<0x7f).contains(byte) && byte != UInt8(ascii: "\\") && byte != UInt8(ascii: "'") {
                text.unicodeScalars.append(Unicode.Scalar(byte))
            } else {
                let hex = String(byte, radix: 16)
                text += "\\x" + (hex.count == 1 ? "0" + hex : hex)
            }
        }
        text += "'"
        if bytes.count > shownReplyBytes { text += " (\(bytes.count) bytes, first \(shownReplyBytes) shown)" }
        return text
    }
}
