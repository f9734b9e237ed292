import CLiburing
import Glibc

/// A POSIX thread, optionally pinned to one CPU, that runs a closure once and can be joined.
///
/// Workers are plain threads rather than tasks: each blocks in its own ring and must never
/// share a core with another worker.
public struct WorkerThread: ~Copyable, Sendable {
    private let thread: pthread_t

    /// Starts `body` on a new thread.
    ///
    /// - Parameters:
    ///   - name: the thread name shown by `top -H` (cut to 15 bytes).
    ///   - cpu: the CPU to pin to before `body` runs, or `nil` to leave it to the scheduler.
    ///   - body: the thread's work; it receives the pinning result (`nil` or the failure).
    public init(name: String, cpu: Int?, _ body: @escaping @Sendable (Errno?) -> Void) throws(Errno) {
        final class Start: @unchecked Sendable {  // handed over once; read by the new thread only
            let name: String
            let cpu: Int?
            let body: @Sendable (Errno?) -> Void
            init(name: String, cpu: Int?, body: @escaping @Sendable (Errno?) -> Void) {
                self.name = name
                self.cpu = cpu
                self.body = body
            }
        }
        let start = Unmanaged.passRetained(Start(name: name, cpu: cpu, body: body)).toOpaque()
        var handle = pthread_t()
        let result = pthread_create(&handle, nil, { context in
            let start = Unmanaged<Start>.fromOpaque(context!).takeRetainedValue()
            cl_set_thread_name(String(start.name.utf8.prefix(15))!)
            var pinning: Errno?
            if let cpu = start.cpu {
                do throws(Errno) { try WorkerThread.pinCurrentThread(to: cpu) } catch { pinning = error }
            }
            start.body(pinning)
            return nil
        }, start)
        // pthread functions return the error number instead of setting errno, and never EINTR.
        if result != 0 {
            Unmanaged<AnyObject>.fromOpaque(start).release()
            throw Errno(rawValue: result)
        }
        thread = handle
    }

    /// Waits for the thread to finish.
    public consuming func join() {
        _ = pthread_join(thread, nil)
        discard self
    }

    deinit { _ = pthread_detach(thread) }

    /// The largest CPU number `pinCurrentThread(to:)` accepts, plus one (`--cpus` allows 0…1023).
    public static let pinnableCPUs = 1024

    /// Pins the calling thread to one CPU (`sched_setaffinity(2)`).
    ///
    /// - Throws: `EINVAL` for a CPU outside `0..<pinnableCPUs` or one the thread may not use.
    static func pinCurrentThread(to cpu: Int) throws(Errno) {
        guard (0..<pinnableCPUs).contains(cpu) else { throw Errno(rawValue: EINVAL) }
        let bits = Int(cl_cpu_mask_word_bits)
        var mask = [UInt](repeating: 0, count: pinnableCPUs / bits)
        mask[cpu / bits] |= 1 << UInt(cpu % bits)
        _ = try mask.withUnsafeBufferPointer { words throws(Errno) in
            try systemCall { cl_sched_setaffinity(words.baseAddress, words.count * MemoryLayout<UInt>.size) }
        }
    }

    /// The CPUs this process may run on (`sched_getaffinity(2)`), in ascending order, all of them
    /// (the mask grows until it holds the kernel's CPU count, up to 65 536 CPUs).
    ///
    /// Empty only if the call fails, which it does not for the calling thread.
    public static var allowedCPUs: [Int] {
        let bits = Int(cl_cpu_mask_word_bits)
        var words = pinnableCPUs / bits
        while words * bits <= 65_536 {
            var mask = [UInt](repeating: 0, count: words)
            do throws(Errno) {
                let written = try mask.withUnsafeMutableBufferPointer { buffer throws(Errno) in
                    try systemCall { cl_sched_getaffinity(buffer.baseAddress, buffer.count * MemoryLayout<UInt>.size) }
                }
                // The kernel writes only its own mask size; the words past it stay zero.
                return cpus(inMask: mask.prefix(Int(written) / MemoryLayout<UInt>.size))
            } catch {
                // EINVAL: the mask is smaller than the kernel's CPU count; try a larger one.
                guard error.rawValue == EINVAL else { return [] }
                words *= 2
            }
        }
        return []
    }

    /// The CPU numbers set in an affinity mask laid out as `cpu_set_t` (CPU n is bit n % 64 of
    /// word n / 64), in ascending order.
    static func cpus(inMask words: ArraySlice<UInt>) -> [Int] {
        let bits = UInt.bitWidth
        var cpus: [Int] = []
        for (offset, word) in words.enumerated() where word != 0 {
            for bit in 0..<bits where word & (1 << UInt(bit)) != 0 { cpus.append(offset * bits + bit) }
        }
        return cpus
    }
}
