import RelayKernel
import Glibc
import Logging

/// Tells systemd how the service is doing, as `sd_notify(3)` does, for `Type=notify`: one
/// datagram of `KEY=VALUE` lines to the Unix socket named by `$NOTIFY_SOCKET` (a path, or
/// `@name` in the abstract namespace). Without the variable (not started by systemd, or another
/// `Type=`), every call does nothing.
///
/// - `ready()`: `READY=1` once every worker listens (systemd then counts the start as done and
///   starts what is ordered after the relay).
/// - `reloading()`: `RELOADING=1` with `MONOTONIC_USEC` (the `CLOCK_MONOTONIC` time, which
///   systemd 253 and later require with it) when a `SIGHUP` reload begins; `ready()` again
///   when it ends, whatever its result (a refused reload leaves the relay running as before).
/// - `stopping()`: `STOPPING=1` when the stop begins (before `--stop-delay`).
///
/// Each also sets `STATUS=`, the one line `systemctl status` shows. A send that fails is logged
/// once and never stops the relay: the notifications help systemd, the relay does not need them.
public final class ServiceNotifier: Sendable {
    /// The socket's path, as `$NOTIFY_SOCKET` gives it.
    public let path: String
    private let socket: UnixDatagramSocket
    private let logger: Logger

    /// A notifier for `$NOTIFY_SOCKET`, or `nil` when it is unset or empty (or no socket can
    /// be had, which is logged).
    public static func fromEnvironment(logger: Logger) -> ServiceNotifier? {
        guard let value = getenv("NOTIFY_SOCKET"), let path = String(validatingCString: value), !path.isEmpty else { return nil }
        do {
            return ServiceNotifier(path: path, socket: try UnixDatagramSocket.unbound(), logger: logger)
        } catch {
            logger.warning("NOTIFY_SOCKET is set but no socket could be created: systemd will not hear of readiness", metadata: [
                "notify_socket": "\(path)", "error": "\(error)",
            ])
            return nil
        }
    }

    private init(path: String, socket: consuming UnixDatagramSocket, logger: Logger) {
        self.path = path
        self.socket = socket
        self.logger = logger
    }

    /// `READY=1`: the relay listens and relays (at start, and at the end of a reload).
    public func ready(status: String) { send(["READY=1", "STATUS=\(Self.oneLine(status))"]) }

    /// `RELOADING=1` with `MONOTONIC_USEC`: a reload has begun.
    public func reloading(now: UInt64 = MonotonicClock.nanoseconds()) {
        send(["RELOADING=1", "MONOTONIC_USEC=\(now / 1_000)", "STATUS=reloading the configuration file"])
    }

    /// `STOPPING=1`: the stop has begun.
    public func stopping(status: String) { send(["STOPPING=1", "STATUS=\(Self.oneLine(status))"]) }

    private func send(_ lines: [String]) {
        let message = Array((lines.joined(separator: "\n") + "\n").utf8)
        do throws(Errno) { try socket.send(message, to: path) } catch {
            logger.warning("sd_notify failed: systemd may not see this state change", metadata: [
                "notify_socket": "\(path)", "state": "\(lines[0])", "error": "\(error)",
            ])
        }
    }

    /// `text` without line breaks (each would start another `KEY=VALUE`).
    static func oneLine(_ text: String) -> String { String(text.map { $0.isNewline ? " " : $0 }) }
}
