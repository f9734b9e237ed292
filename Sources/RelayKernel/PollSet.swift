import CLiburing
import Glibc

/// Fixed `pollfd` storage for one thread's wait on a few descriptors (`ppoll(2)`), so a loop
/// turn waits with nanosecond timeouts and no allocation.
public struct PollSet: ~Copyable {
    @usableFromInline let entries: UnsafeMutablePointer<pollfd>
    /// How many descriptors are watched.
    public let count: Int

    /// Watches each descriptor for readability.
    public init(descriptors: [Int32]) {
        count = descriptors.count
        entries = .allocate(capacity: max(1, count))
        for (index, descriptor) in descriptors.enumerated() {
            entries[index] = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
        }
    }

    /// Watches each of `descriptors` for readability, then keeps `writers` more entries, unused
    /// until `watchWritable` fills them.
    public init(descriptors: [Int32], writers: Int) {
        count = descriptors.count + writers
        entries = .allocate(capacity: max(1, count))
        for (index, descriptor) in descriptors.enumerated() {
            entries[index] = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
        }
        for index in descriptors.count..<count { entries[index] = pollfd(fd: -1, events: 0, revents: 0) }
    }

    deinit { entries.deallocate() }

    /// Watches entry `index` for writability of `descriptor`, or nothing (`nil`).
    public mutating func watchWritable(_ index: Int, descriptor: Int32?) {
        entries[index] = pollfd(fd: descriptor ?? -1, events: Int16(POLLOUT), revents: 0)
    }

    /// The descriptor of a listening socket, for `init(descriptors:)`.
    public static func descriptor(of socket: borrowing UDPSocket) -> Int32 { socket.descriptor }

    /// The descriptor of an event, for `init(descriptors:)`.
    public static func descriptor(of event: WakeupEvent) -> Int32 { event.descriptor }

    /// Stops watching entry `index` (`ppoll` skips negative descriptors).
    public mutating func ignore(_ index: Int) {
        if entries[index].fd >= 0 { entries[index].fd = -1 - entries[index].fd }
    }

    /// Waits until a watched descriptor is readable or the timeout passes; a signal ends the
    /// wait early, as a timeout does.
    ///
    /// - Parameter timeoutNanoseconds: the longest wait; `nil` waits without limit.
    /// - Throws: `Errno` for failures other than `EINTR`.
    public mutating func wait(timeoutNanoseconds: UInt64?) throws(Errno) {
        for index in 0..<count { entries[index].revents = 0 }
        let timeout = timeoutNanoseconds.map { Int64(clamping: $0) } ?? -1
        let result = cl_ppoll(entries, UInt(count), timeout)
        if result < 0 && result != -EINTR { throw Errno(rawValue: -result) }
    }

    /// Whether entry `index` was readable (or in error) at the last wait.
    @inlinable @inline(__always)
    public func isReady(_ index: Int) -> Bool { entries[index].revents != 0 }
}
