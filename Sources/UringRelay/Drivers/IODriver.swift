import RelayKernel

/// An I/O driver: what feeds one worker's `RelayCore` from the kernel. Opened on the worker's
/// own thread, it reports its facts once, then runs until its control channel tells it to stop.
public protocol IODriver: ~Copyable {
    /// Opens every kernel resource of one worker.
    ///
    /// - Throws: `SystemCallError` naming the step that failed.
    init(settings: WorkerSettings, control: WorkerControl) throws(SystemCallError)

    /// The facts worth logging once at start-up.
    var facts: WorkerFacts { get }

    /// Relays, applying its control channel's commands at turn boundaries, until told to stop
    /// and everything received is sent; then returns the counters.
    consuming func run() throws(SystemCallError) -> RelayCounters
}

extension IOUringDriver: IODriver {}
extension PortableDriver: IODriver {}
