@testable import RelayKernel
import Dispatch
import Foundation
import Glibc
import Synchronization
import Testing
@testable import UringRelay

/// A child `statsrelay` in a network namespace of its own (and a mount namespace, so files can
/// be bind-mounted over `/etc/resolv.conf` and `/etc/hosts` for it alone), set up by a
/// `python3` launcher under `unshare --net --mount` that then `execv`s the relay: same process,
/// same pid, nothing left behind when it exits.
///
/// The namespace starts with only a loopback interface, down; `commands` (run in order, inside)
/// bring up what a test needs. A test reaches the relay's namespace from its own sockets with
/// `NetworkNamespace.sockets(of:_:)`.
struct NetworkNamespace: Sendable {
    /// Commands run inside before the relay starts, e.g. `["ip", "link", "set", "lo", "up"]`.
    var commands: [[String]] = [["ip", "link", "set", "lo", "up"]]
    /// Files mounted over others inside (`mount --bind SOURCE TARGET`).
    var binds: [(source: String, target: String)] = []
    /// An address and port where a UDP socket is bound and handed to the relay, never read:
    /// a name server there takes every query and answers none.
    var blackhole: (host: String, port: UInt16)?

    /// The launcher's command line; the relay's executable and arguments follow.
    func launcher(python: URL) -> [String] {
        let program = """
            import json, os, socket, subprocess, sys
            config = json.loads(sys.argv[1])
            def fail(step, detail):
                sys.stderr.write("launcher: %s: %s\\n" % (step, detail))
                sys.exit(3)
            for command in config["commands"]:
                done = subprocess.run(command, capture_output=True, text=True)
                if done.returncode != 0: fail(" ".join(command), done.stderr.strip())
            for source, target in config["binds"]:
                done = subprocess.run(["mount", "--bind", source, target], capture_output=True, text=True)
                if done.returncode != 0: fail("mount --bind " + target, done.stderr.strip())
            if config["blackhole"]:
                host, port = config["blackhole"]
                server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                server.bind((host, port))
                server.set_inheritable(True)
            os.execv(sys.argv[2], sys.argv[2:])
            """
        let config: [String: Any] = [
            "commands": commands,
            "binds": binds.map { [$0.source, $0.target] },
            "blackhole": blackhole.map { [$0.host, Int($0.port)] as [Any] } ?? NSNull(),
        ]
        let json = String(decoding: try! JSONSerialization.data(withJSONObject: config), as: UTF8.self)
        return ["/usr/bin/unshare", "--net", "--mount", "--", python.path, "-c", program, json]
    }

    /// `python3`, after checking that this host lets the tests create namespaces and run
    /// `commands` in one; otherwise cancels the test (reported as skipped) with the reason.
    func requireAvailable() throws -> URL {
        let python = try RelayLauncher.requirePython()
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/unshare") else {
            try Test.cancel("no /usr/bin/unshare: cannot create a network namespace")
        }
        let probe = Process()
        probe.executableURL = URL(fileURLWithPath: "/usr/bin/unshare")
        let script = commands.map { $0.joined(separator: " ") }.joined(separator: " && ")
        probe.arguments = ["--net", "--mount", "--", "/bin/sh", "-c", script.isEmpty ? "true" : script]
        let errors = Pipe()
        probe.standardError = errors
        probe.standardOutput = FileHandle.nullDevice
        try probe.run()
        let reason = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        probe.waitUntilExit()
        if probe.terminationStatus != 0 {
            try Test.cancel(Comment(rawValue: "network namespace unavailable here (unshare --net --mount; \(script)): \(reason)"))
        }
        return python
    }

    /// Runs `body` on a thread that has joined the network namespace of process `pid`, and
    /// returns what it made: sockets opened there stay in that namespace wherever they are used
    /// afterwards. The calling thread (and every other) stays where it is.
    ///
    /// `setns(2)` is looked up with `dlsym`, since Glibc's Swift module does not declare it.
    static func sockets<Result: Sendable>(of pid: Int32, _ body: @escaping @Sendable () throws -> Result) throws -> Result {
        typealias SetNamespace = @convention(c) (Int32, Int32) -> Int32
        let newNetworkNamespace: Int32 = 0x4000_0000  // CLONE_NEWNET
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "setns") else {
            try Test.cancel("setns(2) not found in libc")
        }
        let setNamespace = unsafeBitCast(symbol, to: SetNamespace.self)
        let namespace = open("/proc/\(pid)/ns/net", O_RDONLY | O_CLOEXEC)
        guard namespace >= 0 else { throw Errno.current }
        defer { close(namespace) }
        let outcome = NamespaceOutcome<Result>()
        let thread = WorkerThreadHandle(try WorkerThread(name: "test-netns", cpu: nil) { _ in
            guard setNamespace(namespace, newNetworkNamespace) == 0 else {
                let failure = Errno.current
                outcome.value.withLock { $0 = .failure(failure) }
                return
            }
            let made = Swift.Result { try body() }
            outcome.value.withLock { $0 = made }
        })
        thread.join()
        return try outcome.value.withLock { $0! }.get()
    }
}

/// What a thread in another namespace made, handed back to the thread that waits for it.
final class NamespaceOutcome<Value: Sendable>: Sendable {
    let value = Mutex<Result<Value, any Error>?>(nil)
}
