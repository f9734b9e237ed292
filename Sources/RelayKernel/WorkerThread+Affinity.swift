import CLiburing
import Glibc

extension WorkerThread {
    /// Restricts the calling thread to `cpus` (`sched_setaffinity(2)` with a mask of them), for a
    /// thread that must stay off the workers' CPUs.
    ///
    /// - Throws: `EINVAL` for an empty list, a CPU outside `0..<pinnableCPUs`, or a set the
    ///   thread may not use.
    public static func restrictCurrentThread(to cpus: [Int]) throws(Errno) {
        guard !cpus.isEmpty, cpus.allSatisfy({ (0..<pinnableCPUs).contains($0) }) else { throw Errno(rawValue: EINVAL) }
        let bits = Int(cl_cpu_mask_word_bits)
        var mask = [UInt](repeating: 0, count: pinnableCPUs / bits)
        for cpu in cpus { mask[cpu / bits] |= 1 << UInt(cpu % bits) }
        _ = try mask.withUnsafeBufferPointer { words throws(Errno) in
            try systemCall { cl_sched_setaffinity(words.baseAddress, words.count * MemoryLayout<UInt>.size) }
        }
    }
}
