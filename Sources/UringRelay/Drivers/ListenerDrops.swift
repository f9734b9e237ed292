/// Turns the listening sockets' kernel drop counters (`SO_MEMINFO`, 32 bits, wrapping) into
/// counts of new drops, read at most every `CounterBoard.publishIntervalNanoseconds` and once
/// at exit: datagrams the kernel threw away because a socket's receive queue was full (a
/// stalled or overloaded worker) are counted, not only seen in `/proc/net/udp`.
struct ListenerDrops {
    /// Per listener, the counter at the last reading; `nil` for one this worker does not count
    /// (a socket every worker reads: worker 0 counts its drops, once).
    private var last: [UInt32?]
    private var nextRead: UInt64 = 0

    /// Drop counters for `count` listeners, all starting at zero (new sockets).
    init(count: Int) { last = Array(repeating: 0, count: count) }

    /// Drop counters starting from `baselines` (`WorkerSetup.dropBaselines`: an inherited
    /// socket's drops before this process took it are not counted again; `nil`: not counted here).
    init(baselines: [UInt32?]) { last = baselines }

    /// Starts counting a new listener's drops, after the others (a new socket: from zero).
    mutating func append() { last.append(0) }

    /// Stops counting listener `index`'s drops (it closed); the later ones move down one.
    mutating func remove(at index: Int) { last.remove(at: index) }

    /// Whether the counters are due to be read at `now`.
    func isDue(now: UInt64) -> Bool { now >= nextRead }

    /// Records that the counters were read at `now`.
    mutating func wasRead(now: UInt64) { nextRead = now &+ CounterBoard.publishIntervalNanoseconds }

    /// The drops on listener `index` since its last reading, given its counter now (nil when
    /// the kernel would not say).
    mutating func newDrops(listener index: Int, counter: UInt32?) -> UInt64 {
        guard let counter, let previous = last[index] else { return 0 }
        last[index] = counter
        return UInt64(counter &- previous)
    }
}
