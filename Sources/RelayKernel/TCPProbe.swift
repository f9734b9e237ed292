import CLiburing
import Glibc

/// Health probes over TCP, all run at once with non-blocking sockets and one `poll(2)` loop,
/// so a round takes at most one timeout however many backends there are.
///
/// A probe connects; if it has a request it sends it and reads until the reply contains the
/// expected bytes (etsy statsd's management port answers `health` with `health: up`).
public enum TCPProbe {
    /// One probe to run.
    public struct Target: Sendable {
        /// Where to connect.
        public var address: SocketAddress
        /// Sent once connected, if any.
        public var request: [UInt8]?
        /// Required in the reply, if any.
        public var expect: [UInt8]?

        public init(address: SocketAddress, request: [UInt8]? = nil, expect: [UInt8]? = nil) {
            self.address = address
            self.request = request
            self.expect = expect
        }
    }

    /// `nil` for success, or why the probe failed (`connect: Connection refused (errno 111)`).
    public typealias Outcome = String?

    private enum Stage { case connecting, sending, reading, done }

    /// Runs every probe concurrently and returns their outcomes in order.
    ///
    /// - Parameter timeoutMilliseconds: the bound for the whole round; a probe not finished by
    ///   then fails with `timed out`.
    public static func run(_ targets: [Target], timeoutMilliseconds: Int) -> [Outcome] {
        var outcomes: [Outcome] = Array(repeating: "not run", count: targets.count)
        var descriptors: [Int32] = Array(repeating: -1, count: targets.count)
        var stages: [Stage] = Array(repeating: .done, count: targets.count)
        var replies: [[UInt8]] = Array(repeating: [], count: targets.count)
        defer { for descriptor in descriptors where descriptor >= 0 { close(descriptor) } }

        for (index, target) in targets.enumerated() {
            let domain = target.address.family == .ipv6 ? AF_INET6 : AF_INET
            let descriptor = socket(domain, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard descriptor >= 0 else {
                outcomes[index] = "socket: \(Errno.current.operatorDescription)"
                continue
            }
            descriptors[index] = descriptor
            let result = target.address.withUnsafeSockaddr { address, length in connect(descriptor, address, length) }
            if result == 0 {
                stages[index] = target.request == nil ? .done : .sending
                if target.request == nil { outcomes[index] = nil }
            } else if errno == EINPROGRESS {
                stages[index] = .connecting
            } else {
                outcomes[index] = "connect: \(Errno.current.operatorDescription)"
            }
        }

        let deadline = MonotonicClock.nanoseconds() &+ UInt64(max(0, timeoutMilliseconds)) &* 1_000_000
        while true {
            let active = stages.indices.filter { stages[$0] != .done }
            if active.isEmpty { break }
            let now = MonotonicClock.nanoseconds()
            guard now < deadline else {
                for index in active { outcomes[index] = "timed out after \(timeoutMilliseconds)ms" }
                break
            }
            var pollers = active.map { index in
                pollfd(fd: descriptors[index], events: Int16(stages[index] == .reading ? POLLIN : POLLOUT), revents: 0)
            }
            let waited = poll(&pollers, nfds_t(pollers.count), Int32((deadline - now + 999_999) / 1_000_000))
            if waited < 0 && errno != EINTR { break }
            for (slot, index) in active.enumerated() where pollers[slot].revents != 0 {
                advance(index, targets[index], descriptors[index], &stages[index], &outcomes[index], &replies[index])
            }
        }
        return outcomes
    }

    private static func advance(
        _ index: Int, _ target: Target, _ descriptor: Int32, _ stage: inout Stage, _ outcome: inout Outcome,
        _ reply: inout [UInt8]
    ) {
        switch stage {
        case .connecting:
            var error: Int32 = 0
            var length = socklen_t(MemoryLayout<Int32>.size)
            getsockopt(descriptor, SOL_SOCKET, SO_ERROR, &error, &length)
            if error != 0 {
                outcome = "connect: \(Errno(rawValue: error).operatorDescription)"
                stage = .done
            } else if target.request != nil {
                stage = .sending
                advance(index, target, descriptor, &stage, &outcome, &reply)
            } else {
                outcome = nil
                stage = .done
            }
        case .sending:
            let request = target.request ?? []
            let sent = request.withUnsafeBytes { send(descriptor, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if sent == request.count {
                stage = .reading
            } else if sent < 0 && errno == EAGAIN {
                return
            } else {
                outcome = "send: \(sent < 0 ? Errno.current.operatorDescription : "short write")"
                stage = .done
            }
        case .reading:
            var buffer = [UInt8](repeating: 0, count: 512)
            let count = buffer.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress, $0.count, 0) }
            if count > 0 {
                // Replies are short; anything past 4 KiB is not a statsd admin port.
                reply += buffer.prefix(count)
                if let expect = target.expect, contains(reply, expect) {
                    outcome = nil
                    stage = .done
                } else if reply.count > 4096 {
                    outcome = "reply: unexpected (over 4 KiB)"
                    stage = .done
                }
            } else if count == 0 {
                let shown = String(decoding: reply.prefix(64), as: UTF8.self).filter { !$0.isNewline }
                outcome = "reply: \(reply.isEmpty ? "connection closed without a reply" : "'\(shown)'")"
                stage = .done
            } else if errno != EAGAIN {
                outcome = "recv: \(Errno.current.operatorDescription)"
                stage = .done
            }
        case .done:
            break
        }
    }

    private static func contains(_ haystack: [UInt8], _ needle: [UInt8]) -> Bool {
        guard !needle.isEmpty else { return true }
        guard haystack.count >= needle.count else { return false }
        for start in 0...(haystack.count - needle.count) where haystack[start..<start + needle.count].elementsEqual(needle) {
            return true
        }
        return false
    }
}
