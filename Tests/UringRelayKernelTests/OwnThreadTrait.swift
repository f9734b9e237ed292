import Foundation
import Testing

/// Runs each test case's body on a thread of its own rather than on Swift's shared
/// concurrency pool, so that the suite's `.timeLimit` measures the test and not its wait for a
/// pool thread: `.onOwnThread`, on every suite of this target.
///
/// The kernel tests are synchronous and block their thread for seconds (polls, waits for a
/// relay's exit). On the pool, whose threads number the CPUs and grow by at most one a second,
/// only while fewer of them than CPUs are runnable (libdispatch's monitor on Linux), a body
/// waits for a thread once its time limit has started: Swift Testing starts the limit's timer
/// and the body as two tasks together (`withTimeLimit`). On a loaded 2-CPU host, bodies that took seconds
/// each were reported over their one-minute limit, 14 of them in one run (two busy loops beside
/// the suite); a suite of eight cases each running 35 s on a runnable thread had six reported
/// over the limit, and none with this trait.
///
/// The pool also bounded how many tests ran at once; on their own threads nothing does, so the
/// bound moves to Swift Testing's own, `SWT_EXPERIMENTAL_MAXIMUM_PARALLELIZATION_WIDTH`
/// (`scripts/test.sh`, `scripts/sanitize.sh`), whose wait comes before a case's time limit
/// starts. Where it is not set (a plain `swift test`), the body runs on the pool, as before.
struct OwnThreadTrait: TestTrait, SuiteTrait, TestScoping {
    var isRecursive: Bool { true }

    /// Whether Swift Testing bounds how many test cases run at once (see above).
    static let widthBounded = ProcessInfo.processInfo.environment["SWT_EXPERIMENTAL_MAXIMUM_PARALLELIZATION_WIDTH"] != nil

    func provideScope(
        for test: Test, testCase: Test.Case?, performing function: @Sendable () async throws -> Void
    ) async throws {
        guard Self.widthBounded else { return try await function() }
        try await withTaskExecutorPreference(ThreadPerJobExecutor.shared) { try await function() }
    }
}

extension Trait where Self == OwnThreadTrait {
    /// Runs each test case's body on a thread of its own (`OwnThreadTrait`).
    static var onOwnThread: Self { Self() }
}

/// A task executor that runs each job on a new thread: a synchronous test body, one job, blocks
/// only its own thread.
final class ThreadPerJobExecutor: TaskExecutor {
    static let shared = ThreadPerJobExecutor()

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        let executor = asUnownedTaskExecutor()
        let thread = Thread { job.runSynchronously(on: executor) }
        thread.name = "test-body"
        thread.start()
    }
}
