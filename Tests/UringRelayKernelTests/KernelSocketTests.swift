@testable import RelayKernel
import Foundation
import Glibc
import Testing
import UringRelay

/// The kernel facts the relay's accounting rests on, each proven on loopback: refusals reach the
/// error queue one per datagram, a second socket on the listening port is seen before binding,
/// and the listening socket's drops are readable. These are socket-level tests, below any I/O
/// driver, so they run once rather than per driver.
@Suite("Kernel sockets: error queue, exclusive bind probe, drop counter", .serialized, .timeLimit(.minutes(1)), .onOwnThread)
struct KernelSocketTests {
    /// A loopback address of `host`'s family on a port nothing listens on (`unusedPort()`).
    static func deadAddress(host: String) throws -> SocketAddress {
        // Below the ephemeral range: a port bound and closed again could be taken by another
        // test's socket meanwhile, and would then take the datagrams instead of refusing them.
        SocketAddress(numericHost: host, port: try unusedPort())!
    }

    /// Loopback hosts to test, IPv6 only where the host has it.
    static let hosts: [String] = ipv6LoopbackAvailable ? ["127.0.0.1", "::1"] : ["127.0.0.1"]

    /// How a test drives its sends: drain the error queue after every send, or never until the end.
    enum Draining: String, CaseIterable, CustomTestStringConvertible {
        case afterEachSend, onlyAtEnd
        var testDescription: String { rawValue }
    }

    @Test(
        "to a port with nothing listening, refused datagrams plus failed sends account for every send, exactly",
        arguments: hosts, Draining.allCases)
    func deadPortAccountsForEverySend(host: String, draining: Draining) throws {
        let datagrams = 200  // below what one undrained queue holds (about 255 entries of this size)
        let socket = try UDPSocket.connected(to: try Self.deadAddress(host: host))
        let payload = [UInt8](repeating: UInt8(ascii: "a"), count: 100)
        var accepted = 0
        var refusedSends = 0
        var report = SocketErrorReport()
        for _ in 0..<datagrams {
            do throws(Errno) {
                try socket.send(payload)
                accepted += 1
            } catch {
                #expect(error.rawValue == ECONNREFUSED)
                refusedSends += 1
            }
            if draining == .afterEachSend { report.add(socket.takeErrors()) }
        }
        report.add(try Self.drainUntil(socket, accounts: accepted, current: report))

        #expect(report.refused == accepted, "every accepted datagram was refused once")
        #expect(report.refused + refusedSends == datagrams)
        #expect(report.unreachable == 0 && report.local == 0 && !report.reachedLimit)
        switch draining {
        case .afterEachSend:
            // Draining clears the pending error, so no send is failed for an earlier refusal.
            #expect(refusedSends == 0)
        case .onlyAtEnd:
            // Undrained, a refusal fails the next send, which then sends nothing to refuse: on an
            // idle loopback they alternate exactly (100 of 200); a softirq deferred to ksoftirqd
            // can only make fewer sends fail, never two refusals fail more than one send.
            #expect(refusedSends > 0 && refusedSends <= datagrams / 2)
        }
    }

    /// The queue is charged to the socket's receive buffer, where Linux's default holds ~166
    /// entries of full-size datagrams and drops the rest without a word: the backend socket asks
    /// for more (`UDPSocket.errorQueueBufferBytes`; twice `rmem_max`, ~330, where it may not).
    @Test("a backend socket's error queue keeps a burst of refusals beyond what the default buffer holds: 500 full-size datagrams sent undrained, each counted once as refused or failed")
    func errorQueueHoldsABurst() throws {
        let datagrams = 500
        let socket = try UDPSocket.connected(to: try Self.deadAddress(host: "127.0.0.1"))
        let payload = [UInt8](repeating: UInt8(ascii: "b"), count: 1_200)
        var accepted = 0
        for _ in 0..<datagrams where (try? socket.send(payload)) != nil { accepted += 1 }
        // Undrained, refusals and failed sends alternate (see above): about 250 entries queued.
        #expect(accepted > 200, "only \(accepted) sends accepted")
        let report = try Self.drainUntil(socket, accounts: accepted, current: SocketErrorReport())
        #expect(report.refused == accepted, "\(accepted) datagrams accepted, \(report.refused) refusals kept")
        #expect(!report.reachedLimit)
    }

    @Test("to a live port, every send succeeds and the error queue stays empty", arguments: hosts)
    func livePortHasNoRefusals(host: String) throws {
        let backend = try TestBackend(host: host)
        let socket = try UDPSocket.connected(to: backend.address)
        let datagrams = 200
        for index in 0..<datagrams { try socket.send(Array("live.\(index):1|c\n".utf8)) }
        let received = try collect(from: [backend], expectedLines: datagrams, seconds: 5, settleMilliseconds: 20)
        #expect(received.totalLines == datagrams)
        #expect(socket.takeErrors() == SocketErrorReport())
    }

    @Test("BackendSockets drains each backend's queue on its own: the dead one's refusals, none for the live one")
    func backendSocketsTakeErrorsPerBackend() throws {
        let live = try TestBackend()
        let sockets = try BackendSockets(
            connecting: [try Self.deadAddress(host: "127.0.0.1"), live.address], sendBufferBytes: 1 << 20)
        let payload = Array("backend.line:1|c\n".utf8)
        var failed = [0, 0]
        for _ in 0..<50 {
            for backend in 0..<2 {
                let sent = payload.withUnsafeBytes { Glibc.send(sockets.descriptors[backend], $0.baseAddress, $0.count, 0) }
                if sent < 0 { failed[backend] += 1 }
            }
        }
        var dead = sockets.takeErrors(0)
        let deadline = MonotonicClock.nanoseconds() + 2_000_000_000
        while dead.refused + failed[0] < 50, MonotonicClock.nanoseconds() < deadline {
            sched_yield()
            dead.add(sockets.takeErrors(0))
        }
        #expect(dead.refused + failed[0] == 50)
        #expect(failed[1] == 0)
        #expect(sockets.takeErrors(1).isEmpty)
        #expect(try collect(from: [live], expectedLines: 50, seconds: 5, settleMilliseconds: 20).totalLines == 50)
    }

    @Test("a drain takes no more entries than its limit, and says so; the rest stay for the next")
    func drainIsBounded() throws {
        let socket = try UDPSocket.connected(to: try Self.deadAddress(host: "127.0.0.1"))
        var accepted = 0
        for _ in 0..<20 where (try? socket.send([0x61])) != nil { accepted += 1 }
        #expect(accepted > 5)
        let entries = try Self.drainUntil(socket, accounts: 0, current: SocketErrorReport(), limit: 5)
        #expect(entries.refused == 5 && entries.reachedLimit)
        let rest = try Self.drainUntil(socket, accounts: accepted - 5, current: SocketErrorReport())
        #expect(rest.refused == accepted - 5 && !rest.reachedLimit)
    }

    @Test("a DeliveryLedger over real sockets: a dead backend's packets end refused or failed, never sent; a live one's all sent")
    func ledgerOverRealSockets() throws {
        let live = try TestBackend()
        let sockets = try BackendSockets(
            connecting: [try Self.deadAddress(host: "127.0.0.1"), live.address], sendBufferBytes: 1 << 20)
        // More refusals than one undrained error queue holds (~255 of this size): the ledger's
        // needsDrain must keep the queue from overflowing for the counts to add up.
        let packets = 600
        var ledgers = [DeliveryLedger(confirmationDelay: 20_000_000), DeliveryLedger(confirmationDelay: 20_000_000)]
        for index in 0..<packets {
            let packet = Array("ledger.\(index):1|c\nledger.\(index):2|c\n".utf8)
            for backend in 0..<2 {
                let sent = packet.withUnsafeBytes { Glibc.send(sockets.descriptors[backend], $0.baseAddress, $0.count, 0) }
                let now = MonotonicClock.nanoseconds()
                let fingerprint = packet.withUnsafeBytes { PacketFingerprint(unsafeBytes: $0) }
                if sent == packet.count {
                    ledgers[backend].accepted(lines: 2, bytes: packet.count, fingerprint: fingerprint, now: now)
                } else {
                    ledgers[backend].sendFailed(lines: 2, bytes: packet.count, fingerprint: fingerprint, now: now)
                }
                if ledgers[backend].needsDrain(now: now) { ledgers[backend].drain(backend, of: sockets, now: now) }
            }
        }
        // Wait out the confirmation delay: poll both sockets (POLLERR wakes it early), then drain.
        let deadline = MonotonicClock.nanoseconds() + 3_000_000_000
        while ledgers.contains(where: { $0.unconfirmed.packets > 0 }), MonotonicClock.nanoseconds() < deadline {
            var pollers = (0..<2).map { pollfd(fd: sockets.descriptors[$0], events: 0, revents: 0) }
            _ = poll(&pollers, 2, 5)
            for backend in 0..<2 {
                let now = MonotonicClock.nanoseconds()
                ledgers[backend].drain(backend, of: sockets, now: now)
            }
        }
        for backend in 0..<2 { ledgers[backend].closeAtExit() }

        let dead = ledgers[0]
        #expect(dead.sent == DeliveryLedger.Counts(), "nothing sent to a dead port may be counted as sent")
        #expect(dead.refused.packets + dead.sendErrors.packets == UInt64(packets))
        #expect(dead.refused.lines + dead.sendErrors.lines == UInt64(2 * packets))
        #expect(dead.refused.packets > 0 && dead.unattributedLosses == 0 && dead.unconfirmedAtExit.packets == 0)

        let alive = ledgers[1]
        #expect(alive.sent.packets == UInt64(packets) && alive.sent.lines == UInt64(2 * packets))
        #expect(alive.refused.packets + alive.unreachable.packets + alive.sendErrors.packets == 0)
        #expect(try collect(from: [live], expectedLines: 2 * packets, seconds: 5, settleMilliseconds: 20).totalLines == 2 * packets)
    }

    /// Drains `socket` until `current` plus what was drained accounts for `accepted` refusals, or
    /// two seconds pass (loopback delivers an ICMP before `send` returns; this only guards
    /// against a softirq deferred to `ksoftirqd`).
    static func drainUntil(
        _ socket: borrowing UDPSocket, accounts accepted: Int, current: SocketErrorReport,
        limit: Int = SocketErrorReport.defaultLimit
    ) throws -> SocketErrorReport {
        var drained = socket.takeErrors(limit: limit)
        if drained.reachedLimit { return drained }
        let deadline = MonotonicClock.nanoseconds() + 2_000_000_000
        while current.refused + drained.refused < accepted, MonotonicClock.nanoseconds() < deadline {
            sched_yield()
            drained.add(socket.takeErrors(limit: limit))
        }
        return drained
    }

    // MARK: - Exclusive bind probe

    @Test("a stray SO_REUSEPORT socket on the port makes the probe fail, naming the address and the way out")
    func probeSeesStrayReusePortSocket() throws {
        let stray = try UDPSocket.bound(to: SocketAddress(numericHost: "127.0.0.1", port: 0)!, reusePort: true)
        let address = stray.localAddress
        let error = #expect(throws: SystemCallError.self) { try UDPSocket.probeExclusive(address) }
        #expect(error?.errno.rawValue == EADDRINUSE)
        #expect(error?.description == "bind udp \(address): Address already in use (errno 98); another process "
            + "(or a stray socket with SO_REUSEPORT) holds this address and would silently share its traffic; "
            + "stop it, or pass --reuseport-group to share the port deliberately")
        // Without the probe the relay's own SO_REUSEPORT bind would have joined the stray socket's group.
        #expect(throws: Never.self) { _ = try UDPSocket.bound(to: address, reusePort: true) }
    }

    @Test("a port held without SO_REUSEPORT, or by a wildcard socket, makes the probe fail", arguments: [false, true])
    func probeSeesPlainHolder(wildcard: Bool) throws {
        let holder = try UDPSocket.bound(to: SocketAddress(numericHost: wildcard ? "0.0.0.0" : "127.0.0.1", port: 0)!)
        let address = SocketAddress(numericHost: "127.0.0.1", port: holder.localAddress.port)!
        let error = #expect(throws: SystemCallError.self) { try UDPSocket.probeExclusive(address) }
        #expect(error?.errno.rawValue == EADDRINUSE)
        #expect(error?.hint?.contains("--reuseport-group") == true)
    }

    @Test("a free port passes the probe, and the relay's SO_REUSEPORT sockets can bind it afterwards", arguments: hosts)
    func probePassesOnFreePort(host: String) throws {
        let address = try Self.deadAddress(host: host)
        #expect(throws: Never.self) { try UDPSocket.probeExclusive(address) }
        let first = try UDPSocket.bound(to: address, reusePort: true)
        let second = try UDPSocket.bound(to: address, reusePort: true)
        #expect(first.localAddress == address && second.localAddress == address)
    }

    @Test("port 0 with SO_REUSEPORT is never a port another SO_REUSEPORT socket of this user holds, and the relay's other sockets can join it")
    func reusePortZeroAvoidsHeldPorts() throws {
        // In a network namespace of its own: the "other programs'" sockets below are port-0
        // SO_REUSEPORT binds, and on the host's loopback they would land on ports the relays of
        // tests running beside this one listen on, join those relays' groups and take a share
        // of their datagrams (shown against the relay; the likely cause of one whole datagram
        // of RelayEndToEndTests missing in a local CI run, docs/reliability.md).
        let count = 600
        // The suite itself holds some thousands at its peak: raise the soft limit if it is low.
        var limit = rlimit()
        getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        let needed = rlim_t(6 * count)
        if limit.rlim_cur < needed && limit.rlim_max >= needed {
            limit.rlim_cur = needed
            setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
            getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        }
        try #require(limit.rlim_cur >= needed, "needs \(needed) descriptors, ulimit -n is \(limit.rlim_cur) (hard \(limit.rlim_max))")
        let (ports, held, joined) = try inNetworkNamespace { _ in try Self.bindBesideOtherPrograms(count: count) }
        let shared = ports.filter(held.contains)
        #expect(shared.isEmpty, "ports shared with another program's SO_REUSEPORT socket: \(shared)")
        #expect(Set(ports).count == count, "each port 0 bind got a port of its own")
        // The relay's other workers bind the port the first was given, with SO_REUSEPORT: they join.
        #expect(joined, "a second SO_REUSEPORT socket could not join the first one's port")
    }

    /// `reusePortZeroAvoidsHeldPorts` inside its namespace: binds `count` sockets as other
    /// programs would (SO_REUSEPORT, port 0, the kernel's choice; the kernel lets such binds
    /// share a port: 2 of every 100 did in a run of 900, so with this many a plain port-0 bind
    /// of the same kind lands on one of theirs, ≈ 600 × 600 ÷ 28 000 ≈ 13 expected in the
    /// default port range), then `count` of the relay's (`UDPSocket.bound`, port 0, SO_REUSEPORT).
    ///
    /// - Returns: the relay's sockets' ports, the others' ports, and whether a further
    ///   SO_REUSEPORT socket bound the first relay socket's address.
    private static func bindBesideOtherPrograms(count: Int) throws -> (ports: [UInt16], held: Set<UInt16>, joined: Bool) {
        var others: [Int32] = []
        defer { for descriptor in others { close(descriptor) } }
        var held = Set<UInt16>()
        for _ in 0..<count {
            let descriptor = socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard descriptor >= 0 else { throw NamespaceFailure.failed("socket: \(String(cString: strerror(errno)))") }
            others.append(descriptor)
            var one: Int32 = 1
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_addr.s_addr = in_addr_t(0x7f00_0001).bigEndian
            var length = socklen_t(MemoryLayout<sockaddr_in>.size)
            let bound = setsockopt(descriptor, SOL_SOCKET, SO_REUSEPORT, &one, socklen_t(MemoryLayout<Int32>.size)) == 0
                && withUnsafeMutablePointer(to: &address) { pointer in
                    pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, length) == 0 && getsockname(descriptor, $0, &length) == 0 }
                }
            guard bound else { throw NamespaceFailure.failed("an SO_REUSEPORT port 0 bind: \(String(cString: strerror(errno)))") }
            held.insert(UInt16(bigEndian: address.sin_port))
        }
        var ours: [SocketBox] = []
        for _ in 0..<count {
            ours.append(SocketBox(try UDPSocket.bound(to: SocketAddress(numericHost: "127.0.0.1", port: 0)!, reusePort: true)))
        }
        let first = ours[0].socket.localAddress
        let joining = try UDPSocket.bound(to: first, reusePort: true)
        return (ours.map { $0.socket.localAddress.port }, held, joining.localAddress == first)
    }

    // MARK: - Kernel drops

    @Test("kernelDrops counts exactly the datagrams a full receive buffer dropped, as /proc/net/udp does")
    func kernelDropsMatchLoss() throws {
        let receiver = try UDPSocket.bound(to: SocketAddress(numericHost: "127.0.0.1", port: 0)!, receiveBufferBytes: 4096)
        let address = receiver.localAddress
        #expect(receiver.kernelDrops == 0)
        let sender = try UDPSocket.bound(to: SocketAddress(numericHost: "127.0.0.1", port: 0)!)
        let sent = 300  // a few KiB of buffer holds some dozens of these; the rest must drop
        for index in 0..<sent { try sender.send(Array("burst.\(index):1|c".utf8), to: address) }

        var received = 0
        let deadline = MonotonicClock.nanoseconds() + 5_000_000_000
        while received + Int(receiver.kernelDrops ?? 0) < sent, MonotonicClock.nanoseconds() < deadline {
            if try receiver.receive(timeoutMilliseconds: 10) != nil { received += 1 }
        }
        let counted = receiver.kernelDrops
        let drops = try #require(counted)
        #expect(drops > 0, "the burst must overflow the buffer for this test to mean anything")
        #expect(Int(drops) == sent - received)
        #expect(Self.procNetUDPDrops(port: address.port) == UInt64(drops))
    }

    /// The `drops` column of `/proc/net/udp` for the socket bound to 127.0.0.1:`port`, read
    /// until two readings agree (`agreedReading`: nothing sends to the socket any more).
    static func procNetUDPDrops(port: UInt16) -> UInt64? {
        agreedReading { procNetUDPDropsOnce(port: port) }
    }

    /// One reading of `procNetUDPDrops`.
    private static func procNetUDPDropsOnce(port: UInt16) -> UInt64? {
        // Read to the end: a single read of a /proc table returns only its first page.
        guard let data = FileHandle(forReadingAtPath: "/proc/net/udp")?.readDataToEndOfFile(),
              case let table = String(decoding: data, as: UTF8.self) else { return nil }
        let local = String(format: "0100007F:%04X", port)
        for row in table.split(separator: "\n").dropFirst() {
            let columns = row.split(separator: " ")
            if columns.count > 1, columns[1] == local, let drops = columns.last { return UInt64(drops) }
        }
        return nil
    }
}

extension SocketErrorReport {
    /// Adds another drain's counts to this one.
    mutating func add(_ other: SocketErrorReport) {
        refused += other.refused
        unreachable += other.unreachable
        local += other.local
        reachedLimit = reachedLimit || other.reachedLimit
    }
}

@Suite("Closing a listener at stop", .onOwnThread)
struct DiscardPendingTests {
    @Test("discardPending takes and counts every queued datagram, empty ones included, and stops at its limit", arguments: [0, 1, 37])
    func countsWhatWasQueued(queued: Int) throws {
        let listener = try UDPSocket.bound(to: SocketAddress(numericHost: "127.0.0.1", port: 0)!, receiveBufferBytes: 1 << 20)
        let sender = try UDPSocket.bound(to: SocketAddress(numericHost: "127.0.0.1", port: 0)!)
        for index in 0..<queued { try sender.send(index % 3 == 0 ? [] : Array("late.\(index):1|c".utf8), to: listener.localAddress) }
        if queued > 2 {
            #expect(listener.discardPending(limit: 2) == 2)
            #expect(listener.discardPending() == queued - 2)
        } else {
            #expect(listener.discardPending() == queued)
        }
        let stillQueued = listener.hasPendingDatagram
        #expect(!stillQueued)
    }
}
