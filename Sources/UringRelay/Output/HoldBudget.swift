import RelayKernel
import Synchronization

/// The relay-wide bound on held packets (`--hold-bytes`) and the relay-wide replay rate
/// (`--replay-rate`), shared by every worker's `HoldStore`.
///
/// Memory is reserved in whole chunks with one atomic compare-and-swap, never a lock, and only
/// when a store needs a new chunk (about once per `chunkBytes` of held packets), so the sum of
/// every worker's held chunks never exceeds `totalBytes`, even for a moment.
///
/// Sharing: a worker may use more than its fair share (`fairShareChunks`) while the others do not
/// need it. A worker below its share that finds the budget exhausted files a claim; a worker above
/// its share then stops taking new chunks and gives one chunk back (its oldest packets) for each
/// claim, the next time it holds a packet or at its next loop turn, whichever comes first (an
/// idle worker's turn comes at least every `RelayCore.heartbeatNanoseconds`). A chunk given back
/// is set aside: only a worker below its share may take it. So the oldest packets of the relay go first, not the newest packets of a
/// worker that came late. Set-aside chunks nobody takes (the claimant's backend recovered) stay
/// unused; there are never more than `workers` of them, since a worker claims only when none is
/// set aside.
///
/// Both counts live in one atomic word (reserved in the low 32 bits, set aside in the high 32)
/// so that reserving, returning and setting aside are each one compare-and-swap.
///
/// Chunks are 64 KiB, or smaller for a small total (a 64th of it, at least a page), so that
/// many backends and workers can hold at once even then:
///
/// | `--hold-bytes` | chunk |
/// |---|---|
/// | 4 MiB and more | 64 KiB |
/// | 1 MiB | 16 KiB |
/// | 256 KiB and less | a page (4 KiB) |
public final class HoldBudget: Sendable {
    /// The most bytes of chunks every store together may hold (`--hold-bytes`).
    public let totalBytes: Int
    /// Bytes per chunk: the unit of reservation.
    public let chunkBytes: Int
    /// How many chunks fit in the total.
    public let chunkLimit: Int
    /// The replay rate for the whole relay in bytes per second (`--replay-rate`).
    public let replayBytesPerSecond: Int
    /// How many workers share the budget and the rate.
    public let workers: Int
    /// A worker's fair share of the chunks (at least one).
    public let fairShareChunks: Int
    /// Reserved chunks (low 32 bits) and chunks set aside for claimants (high 32 bits).
    private let chunks = Atomic<Int>(0)
    private static let asideUnit = 1 << 32
    /// Chunks wanted by workers below their fair share; at most one per worker.
    private let claims = Atomic<Int>(0)

    /// The largest chunk, chosen so a packet never waits on more than one chunk's page faults.
    public static let largestChunkBytes = 64 << 10

    /// A budget of `totalBytes` and `replayBytesPerSecond` for `workers` workers.
    ///
    /// - Precondition: `totalBytes >= 0`, `replayBytesPerSecond > 0`, `workers > 0`.
    public init(totalBytes: Int, replayBytesPerSecond: Int, workers: Int) {
        precondition(totalBytes >= 0 && replayBytesPerSecond > 0 && workers > 0)
        self.totalBytes = totalBytes
        self.replayBytesPerSecond = replayBytesPerSecond
        self.workers = workers
        chunkBytes = Self.chunkBytes(forTotal: totalBytes)
        chunkLimit = totalBytes / chunkBytes
        fairShareChunks = max(1, chunkLimit / workers)
    }

    /// The chunk size for a total: a power of two, 64 KiB at most, a 64th of the total when that
    /// is smaller, never below the page size.
    public static func chunkBytes(forTotal total: Int) -> Int {
        let page = MappedChunks.pageBytes
        var chunk = largestChunkBytes
        while chunk > page && chunk * 64 > total { chunk /= 2 }
        return max(chunk, page)
    }

    /// The replay rate of one worker: the relay's rate shared evenly (each worker replays the
    /// packets it held itself).
    public var replayBytesPerSecondPerWorker: Int { max(1, replayBytesPerSecond / workers) }

    /// Bytes of chunks reserved by every store now.
    public var bytesReserved: Int { (chunks.load(ordering: .relaxed) & (Self.asideUnit - 1)) * chunkBytes }

    /// Reserves one chunk; `false` when the total is reached. A store below its fair share may take
    /// a chunk set aside; others only the chunks not set aside.
    func reserveChunk(belowShare: Bool) -> Bool {
        var current = chunks.load(ordering: .relaxed)
        while true {
            let reserved = current & (Self.asideUnit - 1)
            let aside = current / Self.asideUnit
            let desired: Int
            if belowShare && aside > 0 {
                desired = current - Self.asideUnit + 1
            } else if reserved + aside < chunkLimit {
                desired = current + 1
            } else {
                return false
            }
            let (exchanged, original) = chunks.compareExchange(expected: current, desired: desired, ordering: .relaxed)
            if exchanged { return true }
            current = original
        }
    }

    /// Returns one reserved chunk.
    func returnChunk() {
        let previous = chunks.subtract(1, ordering: .relaxed).oldValue
        precondition(previous & (Self.asideUnit - 1) > 0, "hold budget returned more chunks than it reserved")
    }

    /// Returns one reserved chunk and sets it aside for a store below its share.
    func setAsideChunk() {
        let previous = chunks.add(Self.asideUnit - 1, ordering: .relaxed).oldValue
        precondition(previous & (Self.asideUnit - 1) > 0, "hold budget set aside a chunk it had not reserved")
    }

    /// Whether a worker below its share is waiting for a chunk.
    var hasClaims: Bool { claims.load(ordering: .relaxed) > 0 }

    /// Files a claim for a chunk (a worker below its share found the budget exhausted and nothing
    /// set aside); claims beyond one per worker are not recorded.
    func claim() {
        var current = claims.load(ordering: .relaxed)
        while current < workers {
            let (exchanged, original) = claims.compareExchange(expected: current, desired: current + 1, ordering: .relaxed)
            if exchanged { return }
            current = original
        }
    }

    /// Takes one claim to satisfy; `false` when there is none.
    func takeClaim() -> Bool {
        var current = claims.load(ordering: .relaxed)
        while current > 0 {
            let (exchanged, original) = claims.compareExchange(expected: current, desired: current - 1, ordering: .relaxed)
            if exchanged { return true }
            current = original
        }
        return false
    }

    /// Claims waiting (for tests and logs).
    public var pendingClaims: Int { claims.load(ordering: .relaxed) }
}
