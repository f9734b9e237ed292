@testable import RelayKernel
import Glibc
import Synchronization
import Testing
@testable import UringRelay

@Suite("A full submission queue the kernel will not take is an error the caller handles, never an abort", .onOwnThread)
struct RingSubmissionTests {
    @Test("queue full and the submit refused: the next SQE throws the kernel's error and nothing is prepared")
    func refusedSubmitThrows() throws {
        try requireDriver(.uring)
        // A SINGLE_ISSUER ring created on another thread: the kernel refuses this thread's
        // submissions (EEXIST), a real refusal on the path that used to retry and then abort.
        let made = Mutex<ForeignRing?>(nil)
        let creator = WorkerThreadHandle(try WorkerThread(name: "test-ring", cpu: nil) { _ in
            made.withLock { $0 = try? ForeignRing() }
        })
        creator.join()
        let foreign = try #require(made.withLock { $0 })
        guard foreign.ring.setupFlagNames.contains("SINGLE_ISSUER") else {
            try Test.cancel("this kernel does not take IORING_SETUP_SINGLE_ISSUER")
        }
        let event = try WakeupEvent()
        while foreign.ring.freeSubmissions > 0 {
            try foreign.ring.armPoll(descriptor: event.descriptor, userData: UserData(.wakeup))
        }
        #expect(throws: Errno(rawValue: EEXIST)) {
            try foreign.ring.armPoll(descriptor: event.descriptor, userData: UserData(.wakeup))
        }
        #expect(throws: Errno(rawValue: EEXIST)) { try foreign.ring.makeRoom() }
        #expect(foreign.ring.freeSubmissions == 0, "a refused request must not take an SQE")
    }
}

/// A ring made on another thread than the one that uses it.
final class ForeignRing: @unchecked Sendable {  // made on one thread, then used by one other
    let ring: Ring
    init() throws(Errno) { ring = try Ring(entries: 4, completionEntries: 8) }
}
