@testable import RelayKernel
import Foundation
import Glibc
import Synchronization
import Testing
@testable import UringRelay

/// A private network namespace whose loopback holds back the packets sent to one UDP port:
/// an HTB class at `rate` (everything else passes at 10 Gbit/s), so packets to that port wait in
/// the queueing discipline, still charged to the sending socket's send buffer. With a small
/// `SO_SNDBUF` a relay's sends to that port then meet `EAGAIN`, as they do towards a slow link.
///
/// Everything runs on one thread of its own that has entered the namespace (`NetworkNamespace`);
/// the sockets it opens and the threads it starts (a relay's workers) live there. The host's
/// loopback is never touched: `ip` and `tc` run on that thread, under `nsenter --net=` naming
/// its namespace, so `shape` and `shapedClassStatistics` must be called from `body`. The test is cancelled (reported as skipped) where the namespace or the shaping
/// cannot be set up (no `CAP_SYS_ADMIN`, no `tc`, no HTB or u32 in the kernel).
final class ShapedLoopback: Sendable {
    /// The rate packets to the shaped port leave at, in `tc` syntax (`20mbit`).
    let rate: String

    init(rate: String) { self.rate = rate }

    /// Runs `body` in a new namespace with loopback up; `body` calls `shape(port:)` once it
    /// knows the port to hold back. Returns what `body` returns; rethrows what it throws.
    func run<Result: Sendable>(_ body: @escaping @Sendable (ShapedLoopback) throws -> Result) throws -> Result {
        for tool in ["/usr/bin/nsenter", "/usr/sbin/tc", "/usr/sbin/ip"] where !FileManager.default.isExecutableFile(atPath: tool) {
            try Test.cancel(Comment(rawValue: "\(tool) is not installed: cannot shape a private loopback"))
        }
        let outcome = Mutex<Swift.Result<Result, any Error>?>(nil)
        let thread = WorkerThreadHandle(try WorkerThread(name: "test-netns", cpu: nil) { [self] _ in
            let result = Swift.Result<Result, any Error> {
                do throws(Errno) { try RelayKernel.NetworkNamespace.enterNew() } catch {
                    throw NamespaceUnavailable(reason: "unshare(CLONE_NEWNET): \(error.operatorDescription)")
                }
                try command(["ip", "link", "set", "lo", "up"])
                return try body(self)
            }
            outcome.withLock { $0 = result }
        })
        thread.join()
        switch outcome.withLock({ $0 })! {
        case .success(let value): return value
        case .failure(let error as NamespaceUnavailable): try Test.cancel(Comment(rawValue: error.reason))
        case .failure(let error): throw error
        }
    }

    /// Holds back UDP packets to `port` (IPv4): an HTB root whose default class passes 10 Gbit/s
    /// and a class at `rate` with a u32 filter on the destination port; its FIFO holds 100 000
    /// packets, so nothing is dropped there, only delayed.
    func shape(port: UInt16) throws {
        try command(["tc", "qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "default", "10"])
        try command(["tc", "class", "add", "dev", "lo", "parent", "1:", "classid", "1:10", "htb", "rate", "10gbit"])
        try command(["tc", "class", "add", "dev", "lo", "parent", "1:", "classid", "1:20", "htb", "rate", rate, "ceil", rate, "burst", "1600"])
        try command(["tc", "qdisc", "add", "dev", "lo", "parent", "1:20", "handle", "20:", "pfifo", "limit", "100000"])
        try command([
            "tc", "filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip", "prio", "1", "u32",
            "match", "ip", "dport", "\(port)", "0xffff", "flowid", "1:20",
        ])
    }

    /// The shaped class's statistics: packets sent through it, dropped, and how often a packet
    /// had to wait for the rate (`overlimits`).
    func shapedClassStatistics() throws -> (sent: Int, dropped: Int, overlimits: Int) {
        let text = try command(["tc", "-s", "class", "show", "dev", "lo", "classid", "1:20"])
        // " Sent 123 bytes 4 pkt (dropped 0, overlimits 5 requeues 0)"
        func number(after word: String) -> Int {
            guard let range = text.range(of: word) else { return -1 }
            return Int(text[range.upperBound...].prefix { $0.isNumber }) ?? -1
        }
        return (number(after: "bytes "), number(after: "dropped "), number(after: "overlimits "))
    }

    /// Runs `arguments` in this namespace (on its thread); returns what it printed.
    @discardableResult
    private func command(_ arguments: [String]) throws -> String {
        let (status, output) = try RelayKernel.NetworkNamespace.run(arguments)
        if status != 0 { throw NamespaceUnavailable(reason: "\(arguments.joined(separator: " ")): exit \(status): \(output)") }
        return output
    }

    /// Why the namespace or its shaping could not be set up.
    struct NamespaceUnavailable: Error {
        var reason: String
    }
}
