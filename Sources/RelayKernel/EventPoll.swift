import CLiburing
import Glibc

/// An epoll instance (`epoll(7)`): the one owner of its descriptor and of its token storage,
/// allocated once. It never waits itself: its own descriptor is readable whenever one of its
/// descriptors is ready, so a driver waits on it beside everything else (the portable driver in
/// its `ppoll` set, the io_uring driver with a poll request) and then takes the ready ones
/// without blocking (`takeReady()`).
///
/// Level-triggered: a descriptor left with bytes unread is reported again at the next
/// `takeReady()`. Each descriptor is watched for input and its peer's close (`EPOLLIN |
/// EPOLLRDHUP`) and reported with a 64-bit token of the caller's. (`struct epoll_event` is
/// packed on x86-64: the shim's `cl_epoll_*` read and write it.)
public struct EventPoll: ~Copyable {
    private let descriptor: Int32
    private let tokens: UnsafeMutablePointer<UInt64>
    /// The most descriptors one `takeReady()` reports.
    public let capacity: Int

    /// Opens an epoll instance reporting at most `capacity` (≤ 256) descriptors at a time.
    ///
    /// - Throws: `SystemCallError` for `epoll_create1`.
    public init(capacity: Int) throws(SystemCallError) {
        let result = cl_epoll_create()
        guard result >= 0 else { throw SystemCallError("epoll_create1", "", Errno(rawValue: -result)) }
        descriptor = result
        self.capacity = min(256, max(1, capacity))
        tokens = .allocate(capacity: self.capacity)
    }

    /// No epoll instance (a worker with nothing to watch): `isOpen` is false, `takeReady()`
    /// finds nothing, and no descriptor is used.
    public init() {
        descriptor = -1
        capacity = 1
        tokens = .allocate(capacity: 1)
    }

    // close(2) is not retried: see `systemCall`.
    deinit {
        if descriptor >= 0 { _ = CLiburing.close(descriptor) }
        tokens.deallocate()
    }

    /// Whether there is an epoll instance (not `init()`).
    public var isOpen: Bool { descriptor >= 0 }

    /// The epoll descriptor itself, readable while one of its descriptors is ready (`nil`
    /// without an instance).
    public var pollDescriptor: Int32? { descriptor >= 0 ? descriptor : nil }

    /// Watches `descriptor`, reported with `token`.
    ///
    /// - Throws: `Errno` from `epoll_ctl` (`ENOMEM`, `ENOSPC`: `max_user_watches`).
    public func add(_ descriptor: Int32, token: UInt64) throws(Errno) {
        let result = cl_epoll_add(self.descriptor, descriptor, token)
        if result < 0 { throw Errno(rawValue: -result) }
    }

    /// Reports `descriptor` (watched already) with `token` from now on.
    ///
    /// - Throws: `Errno` from `epoll_ctl`.
    public func modify(_ descriptor: Int32, token: UInt64) throws(Errno) {
        let result = cl_epoll_modify(self.descriptor, descriptor, token)
        if result < 0 { throw Errno(rawValue: -result) }
    }

    /// Stops watching `descriptor` (closing it would too, but for a duplicate still open).
    public func remove(_ descriptor: Int32) {
        _ = cl_epoll_remove(self.descriptor, descriptor)
    }

    /// Takes the descriptors ready now, without waiting; their tokens are then `token(at:)`
    /// for `0..<count`, until the next call.
    ///
    /// - Returns: how many were ready (`capacity` at most: more may be waiting); 0 on failure.
    public func takeReady() -> Int {
        descriptor < 0 ? 0 : max(0, Int(cl_epoll_ready(descriptor, tokens, Int32(capacity))))
    }

    /// The token of the `index`th descriptor the last `takeReady()` found.
    public func token(at index: Int) -> UInt64 {
        precondition(index >= 0 && index < capacity)
        return tokens[index]
    }
}
