@testable import RelayKernel
import Foundation
import Glibc
import Synchronization
import Testing

/// CPU affinity as the kernel reports it: `--cpus` and the default worker placement rely on it.
@Suite("Worker threads: the full CPU affinity mask", .onOwnThread)
struct WorkerThreadTests {
    /// Parses a kernel CPU list (`0-3,8,10-11`) into CPU numbers.
    static func cpus(inList list: Substring) -> [Int] {
        list.split(separator: ",").flatMap { range -> [Int] in
            let bounds = range.split(separator: "-").compactMap { Int($0) }
            return bounds.count == 2 ? Array(bounds[0]...bounds[1]) : bounds
        }
    }

    /// The calling thread's `Cpus_allowed_list` from `/proc/thread-self/status`.
    static func procAllowedCPUs() throws -> [Int] {
        let status = try String(contentsOfFile: "/proc/thread-self/status", encoding: .utf8)
        let line = try #require(status.split(separator: "\n").first { $0.hasPrefix("Cpus_allowed_list:") })
        return cpus(inList: line.dropFirst("Cpus_allowed_list:".count).drop { $0 == " " || $0 == "\t" })
    }

    @Test("allowedCPUs lists every CPU of the affinity mask, as /proc's Cpus_allowed_list does")
    func allowedCPUsMatchesProc() throws {
        let listed = WorkerThread.allowedCPUs
        #expect(!listed.isEmpty)
        #expect(listed == (try Self.procAllowedCPUs()))
    }

    @Test("the list parser reads ranges and single CPUs, beyond the first 64", arguments: [
        ("0-3", [0, 1, 2, 3]), ("0,2,4", [0, 2, 4]), ("1,63-65,1023", [1, 63, 64, 65, 1023]),
    ])
    func parsesCPUList(list: String, expected: [Int]) {
        #expect(Self.cpus(inList: Substring(list)) == expected)
    }

    @Test("a mask is read whole: CPUs in every word, past the first 64, up to 1023", arguments: [
        ([0b101], [0, 2]),
        ([0, 1 << 36], [100]),
        ([1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1 << 63], [0, 1023]),
        ([UInt.max, 1], Array(0...64)),
    ] as [([UInt], [Int])])
    func decodesWholeMask(words: [UInt], expected: [Int]) {
        #expect(WorkerThread.cpus(inMask: words[...]) == expected)
    }

    @Test("a thread pinned to the last allowed CPU sees only that CPU; a CPU past 1023 is refused")
    func pinningNarrowsTheMask() throws {
        let last = try #require(WorkerThread.allowedCPUs.last)
        let seen = Mutex<(Errno?, [Int])?>(nil)
        let thread = try WorkerThread(name: "test-pin", cpu: last) { pinning in
            seen.withLock { $0 = (pinning, WorkerThread.allowedCPUs) }
        }
        thread.join()
        let (pinning, cpus) = try #require(seen.withLock { $0 })
        #expect(pinning == nil)
        #expect(cpus == [last])

        let refused = Mutex<Errno?>(nil)
        let outside = try WorkerThread(name: "test-pin-bad", cpu: WorkerThread.pinnableCPUs) { pinning in
            refused.withLock { $0 = pinning }
        }
        outside.join()
        #expect(refused.withLock { $0 } == Errno(rawValue: EINVAL))
    }
}
