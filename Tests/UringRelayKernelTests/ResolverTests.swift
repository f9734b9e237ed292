@testable import RelayKernel
import Dispatch
import Foundation
import Glibc
import Logging
import Synchronization
import Testing
@testable import UringRelay

/// Backend names a test's resolver answers, each pointing where the test says; a name in
/// `hangingAfterFirst` answers its first lookup (start-up) and then never again until
/// `release()`, as a resolver that stops answering does.
final class NameBook: Sendable {
    private let entries: Mutex<[String: [SocketAddress]]>
    private let hangingAfterFirst: Set<String>
    private let calls = Mutex<[String: Int]>([:])
    private let gate = DispatchSemaphore(value: 0)
    private let released = Atomic<Bool>(false)

    init(_ entries: [String: SocketAddress], hangingAfterFirst: Set<String> = []) {
        self.entries = Mutex(entries.mapValues { [$0] })
        self.hangingAfterFirst = hangingAfterFirst
    }

    /// Makes `name` resolve to `address` from the next lookup on.
    func point(_ name: String, to address: SocketAddress) { point(name, to: [address]) }

    /// Makes `name` resolve to `addresses`, in this order, from the next lookup on.
    func point(_ name: String, to addresses: [SocketAddress]) { entries.withLock { $0[name] = addresses } }

    /// How many lookups of `name` have started.
    func calls(of name: String) -> Int { calls.withLock { $0[name, default: 0] } }

    /// Lets every hanging lookup answer.
    func release() {
        released.store(true, ordering: .releasing)
        gate.signal()
    }

    var resolver: BackendResolver.Resolver {
        { [self] host, _ in
            let call = calls.withLock { calls -> Int in
                calls[host, default: 0] += 1
                return calls[host]!
            }
            if call > 1 && hangingAfterFirst.contains(host) && !released.load(ordering: .acquiring) {
                gate.wait()
                gate.signal()
            }
            guard let addresses = entries.withLock({ $0[host] }), !addresses.isEmpty else {
                throw ResolutionError(host: host, reason: "Name or service not known")
            }
            return addresses
        }
    }
}

/// A relay (started, 127.0.0.1, kernel-chosen port, one worker) whose backends are the names
/// `names`, each with `ports[i]`, resolved by `book` and looked up again every 100 ms; its log
/// captured.
func relayFollowing(
    names: [(name: String, port: UInt16)], book: NameBook, driver: IOBackendChoice,
    configure: (inout RelayConfiguration) -> Void = { _ in }
) throws -> (relay: Relay, listen: SocketAddress, log: LockedText) {
    var configuration = RelayConfiguration(backends: try names.map { try BackendAddress(parsing: "\($0.name):\($0.port)") })
    configuration.bindHost = "127.0.0.1"
    configuration.port = 0
    configuration.threads = 1
    configuration.dnsRefreshNanoseconds = 100_000_000
    configuration.ioBackend = driver
    configure(&configuration)
    let log = LockedText()
    let relay = try Relay(
        configuration: configuration, logger: Logger(label: "test") { _ in CapturingLogHandler(store: log) }, resolver: book.resolver)
    let listen = try relay.start().listen
    #expect(relay.driver == driver)
    return (relay, listen, log)
}

/// Runs `body` on a thread of its own and waits for it at most `seconds`.
///
/// - Returns: whether it finished in time; if not, it is left running (the caller unblocks it).
func finishes(within seconds: Double, _ body: @escaping @Sendable () -> Void) throws -> (Bool, WorkerThreadHandle) {
    let done = DispatchSemaphore(value: 0)
    let thread = WorkerThreadHandle(try WorkerThread(name: "test-watchdog", cpu: nil) { _ in
        body()
        done.signal()
    })
    return (done.wait(timeout: .now() + seconds) == .success, thread)
}

@Suite("A resolver that never answers delays nothing else", .serialized, .timeLimit(.minutes(1)), .onOwnThread)
struct ResolverTests {
    @Test("a refresh stuck in the resolver: health checks keep their interval, another name still moves, a stop ends in time; logged once", arguments: ioDrivers)
    func stuckRefresh(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let first = try TestBackend()
        let second = try TestBackend()
        let moved = try TestBackend()
        let health = try FakeHealthPort()
        let book = NameBook(["stuck.test": first.address, "moving.test": second.address], hangingAfterFirst: ["stuck.test"])
        defer { book.release() }
        let (relay, _, log) = try relayFollowing(
            names: [("stuck.test", first.address.port), ("moving.test", second.address.port)], book: book, driver: driver
        ) { configuration in
            configuration.healthCheck = .tcp
            configuration.healthCheckPort = health.port
            configuration.healthIntervalNanoseconds = 50_000_000
            configuration.healthTimeoutNanoseconds = 40_000_000
            configuration.healthRise = 1
            configuration.healthFall = 2
        }
        let monitor = relay.monitor
        // A refresh finds the first refresh's lookup of stuck.test still unanswered.
        #expect(monitor.waitUntil(timeoutNanoseconds: 10_000_000_000) { _ in
            log.withLock { $0 }.contains("backend name lookup has not answered")
        })
        // Another name's lookup is not held up behind it.
        book.point("moving.test", to: moved.address)
        #expect(monitor.waitUntil(timeoutNanoseconds: 10_000_000_000) { $0[1].address == moved.address })
        // Health checks go on: with the health port closed both backends go down.
        health.close()
        #expect(monitor.waitUntil(timeoutNanoseconds: 10_000_000_000) { $0.allSatisfy { $0.state == .down } })
        // Three more refreshes ask for moving.test; stuck.test's lookup is not started again.
        let asked = book.calls(of: "moving.test")
        #expect(monitor.waitUntil(timeoutNanoseconds: 10_000_000_000) { _ in book.calls(of: "moving.test") >= asked + 3 })
        #expect(book.calls(of: "stuck.test") == 2, "one start-up lookup, then one refresh lookup that never answers")
        #expect(occurrences(of: "backend name lookup has not answered", in: log.withLock { $0 }) == 1)
        // A stop does not wait for the lookup.
        let (stopped, thread) = try finishes(within: 10) {
            relay.stop()
            _ = relay.wait()
        }
        #expect(stopped, "the relay's stop waited for a lookup that never answers")
        book.release()
        thread.join()
    }

    @Test("a name that moves onto the relay's own listener or onto another backend keeps its address, logged once; then a good move applies", arguments: ioDrivers)
    func refusedMoves(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let first = try TestBackend()
        let second = try TestBackend()
        let third = try TestBackend()
        let book = NameBook(["a.test": first.address, "b.test": second.address])
        let (relay, listen, log) = try relayFollowing(
            names: [("a.test", first.address.port), ("b.test", second.address.port)], book: book, driver: driver)
        let monitor = relay.monitor
        func settle(after warning: String) {
            #expect(monitor.waitUntil(timeoutNanoseconds: 10_000_000_000) { _ in log.withLock { $0 }.contains(warning) })
            let asked = book.calls(of: "a.test")
            #expect(monitor.waitUntil(timeoutNanoseconds: 10_000_000_000) { _ in book.calls(of: "a.test") >= asked + 3 })
        }

        book.point("a.test", to: listen)
        settle(after: "reaches this relay's own listener \(listen)")
        #expect(monitor.status[0].address == first.address)
        #expect(occurrences(of: "reaches this relay's own listener", in: log.withLock { $0 }) == 1)
        // Lines still reach the first backend, once each: nothing loops back into the relay.
        let sent = (0..<200).map { "loop.\($0):1|c" }
        for chunk in stride(from: 0, to: sent.count, by: 20) {
            try send([sent[chunk..<min(chunk + 20, sent.count)].joined(separator: "\n")], to: listen)
        }
        let received = try collect(from: [first, second], expectedLines: sent.count)
        #expect(received.lines.flatMap { $0 }.sorted() == sent.sorted())

        book.point("a.test", to: second.address)
        settle(after: "same address as backend 2")
        #expect(monitor.status[0].address == first.address)
        #expect(occurrences(of: "same address as backend 2", in: log.withLock { $0 }) == 1)

        book.point("a.test", to: third.address)
        #expect(monitor.waitUntil(timeoutNanoseconds: 10_000_000_000) { $0[0].address == third.address })
        relay.stop()
        let (counters, failures) = relay.wait()
        #expect(failures.isEmpty)
        #expect(counters[.linesReceived] == UInt64(sent.count), "lines looped back into the relay")
        #expect(occurrences(of: "moved to an address it cannot have", in: log.withLock { $0 }) == 2)
        #expect(occurrences(of: "backend address changed", in: log.withLock { $0 }) == 1)
    }

    @Test("a reload that adds a backend keeps a staying name with two addresses on the one in use, as refreshes do; a reload after the name drops it moves it, logged", arguments: ioDrivers)
    func reloadKeepsAddress(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let first = try TestBackend()
        let second = try TestBackend()
        let added = try TestBackend()
        let book = NameBook([:])
        book.point("two.test", to: [first.address, second.address])
        let (relay, listen, log) = try relayFollowing(names: [("two.test", first.address.port)], book: book, driver: driver)
        defer {
            relay.stop()
            _ = relay.wait()
        }
        let monitor = relay.monitor
        #expect(monitor.status[0].address == first.address, "the first address at start")
        // The resolver now lists the other address first; refreshes keep the one in use.
        book.point("two.test", to: [second.address, first.address])
        let asked = book.calls(of: "two.test")
        #expect(monitor.waitUntil(timeoutNanoseconds: 10_000_000_000) { _ in book.calls(of: "two.test") >= asked + 3 })
        #expect(monitor.status[0].address == first.address)

        var candidate = relay.configurationInForce
        candidate.backends = [try BackendAddress(parsing: "two.test:\(first.address.port)"), try BackendAddress(parsing: added.spec)]
        try relay.reload(to: candidate, resolver: book.resolver)
        #expect(relay.routing.current.addresses == [first.address, added.address], "two.test kept on the address in use")
        // Every line reaches the backend its name hashes to: two.test's share the first address.
        let lines = (0..<200).map { "reload.keep.\($0):1|c" }
        try send(datagrams(lines, perDatagram: 20), to: listen)
        let received = try collect(from: [first, added, second], expectedLines: lines.count)
        #expect(received.lines[2].isEmpty, "nothing went to the address not in use")
        #expect(received.lines[0].count + received.lines[1].count == lines.count)
        #expect(received.lines[0].allSatisfy { expectedBackend(of: $0, backends: 2) == 0 })
        #expect(!log.withLock { $0 }.contains("backend address changed"), "no move, none logged")

        // Once the name no longer lists it, a reload moves it and says so.
        book.point("two.test", to: [second.address])
        candidate.backends.reverse()
        try relay.reload(to: candidate, resolver: book.resolver)
        #expect(relay.routing.current.addresses == [added.address, second.address])
        #expect(occurrences(of: "backend address changed", in: log.withLock { $0 }) == 1)
    }
}
