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
                let pinned = cl_pin_current_thread(Int32(cpu))
                if pinned != 0 { pinning = Errno(rawValue: -pinned) }
            }
            start.body(pinning)
            return nil
        }, start)
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

    /// The CPUs this process may run on (`sched_getaffinity(2)`), among the first 64.
    public static var allowedCPUs: [Int] {
        let mask = cl_allowed_cpus()
        return (0..<64).filter { mask & (1 << UInt64($0)) != 0 }
    }
}
