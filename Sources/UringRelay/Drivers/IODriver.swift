import RelayKernel

/// An I/O driver: the transport steps (`WorkerTransport`) that feed one worker's `RelayCore`
/// from the kernel, run by the turn skeleton `WorkerLoop`. Opened on the worker's own thread.
protocol IODriver: WorkerTransport & ~Copyable {
    /// Opens the driver's own kernel resources for `worker` (already open).
    ///
    /// - Throws: `SystemCallError` naming the step that failed; what it opened so far is
    ///   released in its teardown order.
    init(opening worker: borrowing WorkerState) throws(SystemCallError)

    /// The facts worth logging once at start-up.
    func facts(_ worker: borrowing WorkerState) -> WorkerFacts
}

extension IOUringDriver: IODriver {}
extension PortableDriver: IODriver {}
