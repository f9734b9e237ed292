import BasicContainers
import RelayKernel

/// The TCP backends' side of a worker's backend connections: their links, made and kept in
/// step with the pool, fed by the driver, and counted.
extension BackendConnections {
    /// One link per TCP backend of `pool`; `linkOf` is set to each backend's link index (−1: UDP).
    static func makeLinks(
        for pool: BackendPool, sendProtocol: BackendTransport, queueBytes: Int, sendBufferBytes: Int, now: UInt64,
        linkOf: inout [Int], nextLinkID: inout UInt16
    ) -> RigidArray<TCPBackendLink> {
        let streamed = pool.backends.map { ($0.transport ?? sendProtocol) == .tcp }
        var links = RigidArray<TCPBackendLink>(capacity: streamed.count { $0 })
        linkOf = Array(repeating: -1, count: pool.count)
        for backend in pool.backends.indices where streamed[backend] {
            linkOf[backend] = links.count
            links.append(TCPBackendLink(
                id: nextLinkID, address: pool.addresses[backend], queueBytes: queueBytes, sendBufferBytes: sendBufferBytes, now: now))
            nextLinkID &+= 1
        }
        return links
    }

    /// Whether `backend` is a TCP backend (its packets go to `enqueueStream`).
    @inline(__always)
    func isStream(_ backend: Int) -> Bool { linkOf[backend] >= 0 }

    /// Whether any TCP link is open (of a backend in the pool, or one removed and still writing).
    var hasStreams: Bool { links.count > 0 || retiredLinks.count > 0 }

    /// How long a TCP backend removed from the pool may go on writing what its link held.
    static let retiredLinkNanoseconds: UInt64 = 1_000_000_000
    /// How long, after that, a given-up link waits for the completion of a `send` it ended
    /// (`TCPBackendLink.abandon`) before it is finished anyway, its queue left allocated.
    static let abandonedSendNanoseconds: UInt64 = 1_000_000_000

    /// Copies `slot`'s packet into `backend`'s link queue (or drops and counts it when the
    /// queue is full) and frees the slot: the core is done with it.
    ///
    /// - Precondition: `backend` is a TCP backend (`isStream`).
    @inline(__always)
    mutating func enqueueStream(slot: Int, backend: Int, core: inout RelayCore) {
        links[linkOf[backend]].enqueue(slot: slot, of: core.sendBuffers)
        _ = core.sendCompleted(slot: slot, result: Int32(clamping: core.sendBuffers.length(of: slot)))
    }

    /// Moves every link on: connects, finishes connections, and (with `writes`) writes what
    /// is queued without waiting.
    mutating func progressStreams(now: UInt64, writes: Bool) {
        for index in links.indices { links[index].progress(now: now, writes: writes) }
        for index in retiredLinks.indices { retiredLinks[index].progress(now: now, writes: writes) }
    }

    /// The link whose requests carry `index` (`TCPBackendLink.requestIndex`), if it still lives.
    /// In `links` (`retired` false) or `retiredLinks`.
    private func link(forRequest index: UInt32) -> (position: Int, retired: Bool)? {
        let id = UInt16(truncatingIfNeeded: index >> 16)
        for position in links.indices where links[position].id == id { return (position, false) }
        for position in retiredLinks.indices where retiredLinks[position].id == id { return (position, true) }
        return nil
    }

    /// A TCP backend's `send` SQE completed (io_uring driver).
    mutating func streamSendCompleted(request index: UInt32, result: Int32, now: UInt64) {
        guard let (position, retired) = link(forRequest: index) else { return }
        let connection = UInt16(truncatingIfNeeded: index)
        if retired {
            retiredLinks[position].writeCompleted(result: result, connection: connection, now: now)
        } else {
            links[position].writeCompleted(result: result, connection: connection, now: now)
        }
    }

    /// A TCP backend's writability poll completed (io_uring driver).
    mutating func streamPollCompleted(request index: UInt32) {
        guard let (position, retired) = link(forRequest: index) else { return }
        let connection = UInt16(truncatingIfNeeded: index)
        if retired {
            retiredLinks[position].pollCompleted(connection: connection)
        } else {
            links[position].pollCompleted(connection: connection)
        }
    }

    /// Whether a link waits for its socket to become writable (connecting, or its send
    /// buffer full).
    var streamsWantWritable: Bool {
        for index in links.indices where links[index].wantsWritable { return true }
        for index in retiredLinks.indices where retiredLinks[index].wantsWritable { return true }
        return false
    }

    /// The earliest time a link needs a turn (a reconnection, a connection's time running out).
    var nextStreamDeadline: UInt64? {
        var first: UInt64?
        for index in links.indices { first = earliest(first, links[index].nextDeadline) }
        for index in retiredLinks.indices {
            first = earliest(earliest(first, retiredLinks[index].nextDeadline), retiredLinkDeadlines[index])
        }
        return first
    }

    /// Whether every link has written what it holds, or cannot now (not connected).
    var streamsSettled: Bool {
        for index in links.indices where !links[index].isSettled { return false }
        for index in retiredLinks.indices where !retiredLinks[index].isSettled { return false }
        return true
    }

    /// Counts what the links did since the last report, the lines their backends' kernels
    /// acknowledged since included (`TCPBackendLink.confirmDelivery`); a removed backend's link
    /// that wrote all it held and had it acknowledged, cannot go on (not connected) or ran out
    /// of time is finished and closed.
    mutating func reportStreams(into core: inout RelayCore, now: UInt64) {
        guard hasStreams else { return }
        for backend in linkOf.indices where linkOf[backend] >= 0 {
            links[linkOf[backend]].confirmDelivery(now: now)
            var report = DeliveryLedger.Report()
            report.stream = links[linkOf[backend]].takeReport()
            core.countDelivery(report, backend: identities[backend])
        }
        var index = 0
        while index < retiredLinks.count {
            retiredLinks[index].confirmDelivery(now: now)
            if now >= retiredLinkDeadlines[index], !retiredLinks[index].isAbandoned {
                // Out of time: given up; the send it ended gets its own short deadline.
                retiredLinks[index].abandon()
                let (later, overflow) = now.addingReportingOverflow(Self.abandonedSendNanoseconds)
                retiredLinkDeadlines[index] = overflow ? .max : later
            }
            let done = retiredLinks[index].isSettled || (retiredLinks[index].isAbandoned && now >= retiredLinkDeadlines[index])
            if done { retiredLinks[index].finish() }
            var report = DeliveryLedger.Report()
            report.stream = retiredLinks[index].takeReport()
            core.countDelivery(report, backend: retiredLinkIdentities[index])
            if done {
                _ = retiredLinks.remove(at: index)
                retiredLinkIdentities.remove(at: index)
                retiredLinkDeadlines.remove(at: index)
            } else {
                index += 1
            }
        }
    }

    /// At exit: what each link still holds unwritten is dropped and counted, and what it wrote
    /// unacknowledged is counted unconfirmed (or lost, on a connection the backend closed).
    mutating func finishStreams(into core: inout RelayCore) {
        for index in links.indices { links[index].finish() }
        for index in retiredLinks.indices { retiredLinks[index].finish() }
        reportStreams(into: &core, now: .max)
    }

    /// Makes the links of `next` (a membership change): a TCP backend that stays at the same
    /// address keeps its link (connection, queue and counts); a removed one's link goes on
    /// writing what it holds for at most `retiredLinkNanoseconds` (then, or at exit, what is
    /// left unwritten is counted as `tcp_unsent_at_exit`, and what is written unacknowledged
    /// as unconfirmed).
    ///
    /// - Parameter kept: per backend of `next`, the old backend it continues at the same
    ///   address, if any.
    mutating func rebuildLinks(for next: BackendPool, keeping kept: [Int?], core: inout RelayCore, now: UInt64) {
        var backendOfLink = Array(repeating: -1, count: links.count)
        for backend in linkOf.indices where linkOf[backend] >= 0 { backendOfLink[linkOf[backend]] = backend }
        // Taken out last first: old[k] is link `links.count − 1 − k`.
        var old = RigidArray<TCPBackendLink?>(capacity: links.count)
        while !links.isEmpty { old.append(links.removeLast()) }
        let oldCount = old.count
        let streamed = next.backends.map { ($0.transport ?? sendProtocol) == .tcp }
        var newLinks = RigidArray<TCPBackendLink>(capacity: streamed.count { $0 })
        var newLinkOf = Array(repeating: -1, count: next.count)
        for backend in next.backends.indices where streamed[backend] {
            newLinkOf[backend] = newLinks.count
            if let previous = kept[backend], linkOf[previous] >= 0, let link = old[oldCount - 1 - linkOf[previous]].take() {
                newLinks.append(link)
            } else {
                newLinks.append(TCPBackendLink(
                    id: nextLinkID, address: next.addresses[backend], queueBytes: streamQueueBytes, sendBufferBytes: sendBufferBytes,
                    now: now))
                nextLinkID &+= 1
            }
        }
        for k in old.indices {
            guard let link = old[k].take() else { continue }
            retiredLinks.append(link)
            retiredLinkIdentities.append(identities[backendOfLink[oldCount - 1 - k]])
            retiredLinkDeadlines.append(now &+ Self.retiredLinkNanoseconds)
        }
        links = newLinks
        linkOf = newLinkOf
    }
}
