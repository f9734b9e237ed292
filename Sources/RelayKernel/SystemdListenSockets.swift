import Glibc

/// The sockets systemd passes a socket-activated service (`sd_listen_fds(3)`'s protocol):
/// descriptors 3, 4, … as many as `LISTEN_FDS` says, named by `LISTEN_FDNAMES`
/// (colon-separated), for the process `LISTEN_PID` names.
public enum SystemdListenSockets {
    /// The first passed descriptor (`SD_LISTEN_FDS_START`).
    public static let firstDescriptor: Int32 = 3

    /// Why the environment's sockets cannot be used.
    public struct Problem: Error, CustomStringConvertible, Sendable {
        /// What is wrong, naming the variable.
        public var description: String
    }

    /// Takes the sockets passed to this process, owned and close-on-exec, with their names
    /// (`""` where none was given); `nil` when there are none for this process (no
    /// `LISTEN_PID`, or another process's). The variables are removed, as `sd_listen_fds(1)`
    /// does, so no child would take the sockets for its own. Called before the process opens any
    /// descriptor of its own, so that a `LISTEN_FDS` larger than what was passed finds the
    /// descriptors past the passed ones closed instead of adopting one of the process's.
    ///
    /// - Throws: `Problem` for a `LISTEN_FDS` that is not a count, or a descriptor that is not open.
    public static func take() throws(Problem) -> [(socket: SocketBox, name: String)]? {
        guard let pidText = getenv("LISTEN_PID").map({ String(cString: $0) }) else { return nil }
        guard Int32(pidText) == getpid() else { return nil }
        let countText = getenv("LISTEN_FDS").map { String(cString: $0) } ?? ""
        let namesText = getenv("LISTEN_FDNAMES").map { String(cString: $0) }
        unsetenv("LISTEN_PID")
        unsetenv("LISTEN_FDS")
        unsetenv("LISTEN_FDNAMES")
        guard let count = Int32(countText), count >= 0, count <= 4_096 else {
            throw Problem(description: "LISTEN_FDS=\(countText.prefix(32)) is not a count of sockets")
        }
        let names = namesText.map { $0.split(separator: ":", omittingEmptySubsequences: false).map(String.init) } ?? []
        var sockets: [(socket: SocketBox, name: String)] = []
        for offset in 0..<count {
            let descriptor = firstDescriptor + offset
            guard fcntl(descriptor, F_SETFD, FD_CLOEXEC) == 0 else {
                throw Problem(description: "LISTEN_FDS=\(count): descriptor \(descriptor) is not open (fewer sockets were passed than LISTEN_FDS says)")
            }
            let index = Int(offset)
            sockets.append((SocketBox(UDPSocket.adopting(descriptor: descriptor)), index < names.count ? names[index] : ""))
        }
        return sockets
    }
}
