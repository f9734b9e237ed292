import CLiburing
import Glibc

/// Descriptors 0, 1 and 2 (standard input, output and error), which the process must hold
/// before it opens anything else.
///
/// A process started with one of them closed (`statsrelay … 2>&-`, a careless supervisor) would
/// otherwise hand that number to the first descriptor it opens — an eventfd, a ring, a listening
/// or a connected backend socket — and every log line and the exit report would go to it: lost,
/// or worse, sent to a backend as datagrams.
public enum StandardDescriptors {
    /// Opens `/dev/null` on each of 0, 1 and 2 that is closed, lowest first (`open(2)` returns
    /// the lowest free number, so each lands where it belongs), read-write and inherited.
    ///
    /// - Precondition: call first thing, before any thread starts or anything is opened.
    /// - Returns: the descriptors that were closed and now hold `/dev/null`; a descriptor that
    ///   could not be opened is left out (the process goes on without it).
    @discardableResult
    public static func openMissing() -> [Int32] {
        var opened: [Int32] = []
        for descriptor: Int32 in 0...2 {
            guard fcntl(descriptor, F_GETFD) == -1, errno == EBADF else { continue }
            guard let null = try? systemCall({ open("/dev/null", O_RDWR) }) else { continue }
            if null == descriptor {
                opened.append(descriptor)
            } else {
                // Only if a lower one was closed meanwhile, which nothing here does.
                _ = close(null)
            }
        }
        return opened
    }
}
