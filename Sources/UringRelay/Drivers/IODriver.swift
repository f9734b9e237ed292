import RelayKernel

/// An I/O driver: what feeds one worker's `RelayCore` from the kernel. Opened on the worker's
/// own thread, it reports its facts once, then runs until its wake-up event asks it to stop.
public protocol IODriver: ~Copyable {
    /// Opens every kernel resource of one worker.
    ///
    /// - Throws: `SystemCallError` naming the step that failed.
    init(settings: WorkerSettings, wakeup: WakeupEvent) throws(SystemCallError)

    /// The facts worth logging once at start-up.
    var facts: WorkerFacts { get }

    /// Relays until the wake-up event fires and everything received is sent, then returns the
    /// counters.
    consuming func run() throws(SystemCallError) -> RelayCounters
}

extension IOUringDriver: IODriver {}
extension PortableDriver: IODriver {}
