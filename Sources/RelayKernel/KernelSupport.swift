import CLiburing
import Glibc

/// What the running kernel offers, probed once: tests skip and the relay explains itself
/// from this rather than failing deep inside a worker.
public enum KernelSupport {
    /// The kernel release (`uname -r`).
    public static var release: String {
        var names = utsname()
        uname(&names)
        return withUnsafeBytes(of: names.release) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
    }

    /// The version a kernel release starts with (`6.18.44-fc-v1252` → 6, 18, 44; a missing
    /// patch level is 0), or `nil` when `release` does not start with two dot-separated numbers.
    public static func version(of release: String) -> (major: Int, minor: Int, patch: Int)? {
        func number(_ text: Substring) -> Int? { Int(text.prefix { ("0"..."9").contains($0) }) }
        let parts = release.split(separator: ".", maxSplits: 3, omittingEmptySubsequences: false)
        guard parts.count >= 2, let major = Int(parts[0]), let minor = number(parts[1]) else { return nil }
        // "6.10-rc3": the minor's digits end the version.
        let patch = parts.count > 2 && parts[1].allSatisfy({ ("0"..."9").contains($0) }) ? number(parts[2]) ?? 0 : 0
        return (major, minor, patch)
    }

    /// Whether a kernel of `release` picks a socket of a `SO_REUSEPORT` group by the CPU each
    /// set with `SO_INCOMING_CPU`: from Linux 6.2 (commit b261eda84ec1), and the stable 6.1.2,
    /// 6.0.16 and 5.15.86 it was backported to. Earlier kernels take the option, but their fast
    /// reuseport selection hashes past it. (A distribution may have backported it elsewhere.)
    public static func selectsReusePortByIncomingCPU(release: String) -> Bool {
        guard let (major, minor, patch) = version(of: release) else { return false }
        switch (major, minor) {
        case let (major, minor) where (major, minor) >= (6, 2): return true
        case (6, 1): return patch >= 2
        case (6, 0): return patch >= 16
        case (5, 15): return patch >= 86
        default: return false
        }
    }

    /// Why the io_uring driver cannot run here with the default sizes (128 receive buffers of
    /// 8192 bytes, 1400-byte packets, one backend), or `nil` when it can (the `auto` ladder's
    /// probe, run once): tests skip their io_uring cases on it.
    public static let unavailableReason: String? =
        uringDriverFailure(
            sizing: RingSizing(receiveBuffers: 128, packetBytes: 1400, maxLineBytes: 8192, backendCount: 1),
            payloadBytes: 8192)?.description

    /// Whether this kernel's rings take receive bundles (`IORING_FEAT_RECVSEND_BUNDLE`, Linux
    /// 6.10), from the features of a small ring set up once; `false` without io_uring.
    public static let receiveBundlesAvailable: Bool = {
        do throws(Errno) {
            let ring = try Ring(entries: 4, completionEntries: 8)
            return ring.supportsReceiveBundles
        } catch { return false }
    }()

    /// Why the io_uring driver cannot run here with these sizes, or `nil` when it can: the
    /// `auto` ladder's probe. Tries, in order, what the driver needs: ring set-up with its
    /// flags and the worker's queue sizes, a provided-buffer ring of the real size (pinned
    /// memory: the memlock limit) and the TCP receive group's ring when the workers have one, the opcodes it submits, and a first multishot `recv` that
    /// must deliver a datagram sent to itself on 127.0.0.1.
    ///
    /// The kernel frees the probe's ring in the background after it is closed, so its pinned
    /// memory may still be charged while the workers start (see `RingSizing.lockedBytes`).
    /// - Parameters:
    ///   - sizing: the sizes a worker will use.
    ///   - payloadBytes: the size of each receive buffer.
    /// - Returns: what failed, for the start-up log (`operation: reason (errno N)`).
    public static func uringDriverFailure(sizing: RingSizing, payloadBytes: Int) -> UringProbeFailure? {
        let ring: Ring
        do throws(Errno) {
            ring = try Ring(sizing: sizing)
        } catch { return UringProbeFailure(operation: "io_uring_setup", errno: error) }
        let receiveBuffers = sizing.receiveBuffers
        var buffers: ProvidedBufferRing
        do throws(Errno) {
            buffers = try ProvidedBufferRing(ring: ring, groupID: 0, count: receiveBuffers, payloadBytes: payloadBytes)
        } catch {
            ring.close()
            return UringProbeFailure(operation: "io_uring_register_buf_ring \(receiveBuffers) buffers", errno: error)
        }
        // The TCP receive group, when the workers will have one: its ring is pinned too (its
        // buffers are not, so the probe's are small).
        var streamBuffers = StreamBufferRing()
        if sizing.streamReceiveBuffers > 0 {
            do throws(Errno) {
                streamBuffers = try StreamBufferRing(ring: ring, groupID: 1, count: sizing.streamReceiveBuffers, bufferBytes: 64)
            } catch {
                ring.close()
                return UringProbeFailure(operation: "io_uring_register_buf_ring \(sizing.streamReceiveBuffers) TCP buffers", errno: error)
            }
        }
        let (failure, receiveEnded) = probeReceive(ring: ring, buffers: buffers)
        // Teardown in one order on every path: the ring exits before the buffers it may write
        // into are unmapped; a receive whose end never came keeps them mapped (once per start).
        if !receiveEnded { buffers.keepMappedAfterDestruction() }
        ring.close()
        _ = consume buffers
        _ = consume streamBuffers
        return failure
    }

    /// The probe's steps after its rings are made: the opcodes, then a multishot `recv` on a
    /// socket of its own that must deliver a datagram sent to itself; the receive is then
    /// cancelled and its end awaited (at most 500 ms).
    ///
    /// - Returns: what failed, if anything, and whether no receive is left armed.
    private static func probeReceive(ring: borrowing Ring, buffers: borrowing ProvidedBufferRing) -> (UringProbeFailure?, Bool) {
        let missing = ring.withUnsafeRingValue { cl_first_missing_opcode($0) }
        if missing < 0 { return (UringProbeFailure(operation: "io_uring_register PROBE", errno: Errno(rawValue: -missing)), true) }
        if missing > 0 { return (UringProbeFailure(operation: "io_uring opcode \(missing)", detail: "not supported by kernel \(release)"), true) }
        let socket: UDPSocket
        do {
            socket = try UDPSocket.bound(to: SocketAddress(numericHost: "127.0.0.1", port: 0)!)
        } catch { return (UringProbeFailure(operation: "\(error.operation) \(error.target)", errno: error.errno), true) }
        var armed = false
        var failure: UringProbeFailure?
        do throws(Errno) {
            try ring.armMultishotReceive(on: socket, buffers: buffers, userData: UserData(.receive))
            try ring.submitAndWait(completions: 0, timeoutNanoseconds: 0, minimumWaitMicroseconds: 0)
            armed = true
            try socket.send([0x70], to: socket.localAddress)
            try ring.submitAndWait(completions: 1, timeoutNanoseconds: 500_000_000, minimumWaitMicroseconds: 0)
            if let completion = ring.nextCompletion() {
                if completion.result < 0 {
                    failure = UringProbeFailure(operation: "multishot recv (Linux 6.0+)", errno: Errno(rawValue: -completion.result))
                } else if completion.bufferID == nil {
                    failure = UringProbeFailure(operation: "multishot recv", detail: "no provided buffer in the completion")
                }
                if !completion.hasMore { armed = false }
            } else {
                failure = UringProbeFailure(operation: "multishot recv", detail: "no completion within 500ms (kernel \(release))")
            }
        } catch { failure = UringProbeFailure(operation: "io_uring_enter", errno: error) }
        guard armed else { return (failure, true) }
        // Cancelled, the receive reports its end (`ECANCELED`, no `MORE` flag).
        let deadline = MonotonicClock.nanoseconds() &+ 500_000_000
        do throws(Errno) {
            try ring.cancel(UserData(.receive), userData: UserData(.cancel))
            while armed, MonotonicClock.nanoseconds() < deadline {
                try ring.submitAndWait(completions: 1, timeoutNanoseconds: 100_000_000, minimumWaitMicroseconds: 0)
                while let completion = ring.nextCompletion() {
                    if completion.userData.kind == .receive && !completion.hasMore { armed = false }
                }
            }
        } catch {}
        return (failure, !armed)
    }
}

/// Why the io_uring driver cannot run: the step that failed and the kernel's answer.
public struct UringProbeFailure: Error, CustomStringConvertible, Sendable {
    /// The step, e.g. `io_uring_setup`.
    public var operation: String
    /// The kernel's error, when the step failed with one.
    public var errno: Errno?
    /// What went wrong when there is no error number.
    public var detail: String?

    public init(operation: String, errno: Errno? = nil, detail: String? = nil) {
        self.operation = operation
        self.errno = errno
        self.detail = detail
    }

    /// `operation: reason (errno N)`.
    public var description: String {
        "\(operation): \(errno?.operatorDescription ?? detail ?? "failed")"
    }
}
