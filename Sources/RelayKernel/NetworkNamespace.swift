import CLiburing
import Glibc

/// A network namespace of the calling thread's own, for tests that change a loopback (a
/// queueing discipline that holds packets, a firewall rule) without touching the host's.
///
/// Namespaces belong to threads: after `enterNew()` the calling thread, the sockets it opens
/// and the threads and processes it starts see only the new namespace; the rest of the process
/// keeps the host's. A socket stays in the namespace it was opened in whichever thread uses it.
package enum NetworkNamespace {
    /// Moves the calling thread into a new, empty network namespace (`unshare(CLONE_NEWNET)`;
    /// needs `CAP_SYS_ADMIN`). Its loopback starts down.
    ///
    /// - Throws: `Errno` from `unshare(2)` (`EPERM` without the capability).
    package static func enterNew() throws(Errno) {
        let result = cl_unshare_network()
        if result < 0 { throw Errno(rawValue: -result) }
    }

    /// The path naming the calling thread's network namespace (`/proc/PID/task/TID/ns/net`).
    package static var currentThreadPath: String { "/proc/\(getpid())/task/\(cl_gettid())/ns/net" }

    /// Runs `/usr/bin/nsenter --net=<the calling thread's namespace> arguments…` to completion
    /// and returns its exit status and what it wrote to standard output and error.
    ///
    /// The namespace is named explicitly, so a command meant for a private loopback can never
    /// reach the host's. `posix_spawn(3)` rather than Foundation's `Process`: the output pipe is
    /// opened close-on-exec, so no child another thread starts meanwhile keeps it open.
    /// - Throws: `Errno` from `pipe2`, `posix_spawn` or `waitpid`.
    package static func run(_ arguments: [String]) throws(Errno) -> (status: Int32, output: String) {
        var ends: [Int32] = [0, 0]
        let piped = cl_pipe_cloexec(&ends)
        if piped < 0 { throw Errno(rawValue: -piped) }
        defer { _ = close(ends[0]) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, ends[1], 1)
        posix_spawn_file_actions_adddup2(&actions, ends[1], 2)
        let argv = ["/usr/bin/nsenter", "--net=\(currentThreadPath)"] + arguments
        let cArguments = argv.map { strdup($0) } + [nil]
        let environment = [strdup("PATH=/usr/sbin:/usr/bin:/sbin:/bin"), nil]
        defer { for pointer in cArguments + environment { free(pointer) } }
        var child: pid_t = 0
        let spawned = posix_spawn(&child, argv[0], &actions, nil, cArguments, environment)
        _ = close(ends[1])
        if spawned != 0 { throw Errno(rawValue: spawned) }
        var output: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = chunk.withUnsafeMutableBytes { raw in (try? systemCall { read(ends[0], raw.baseAddress, raw.count) }) ?? 0 }
            if count <= 0 { break }
            output += chunk[0..<count]
        }
        var status: Int32 = 0
        _ = try systemCall { waitpid(child, &status, 0) }
        // WIFEXITED / WEXITSTATUS, which do not import: the low 7 bits are the signal, if any.
        let exitStatus = status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        return (exitStatus, String(decoding: output, as: UTF8.self))
    }
}
