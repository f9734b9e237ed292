import Dispatch
@testable import RelayKernel
import Synchronization
import Testing
@testable import UringRelay

/// A resolver for tests: names in `hanging` block until `release()` (as a resolver that never
/// answers does), names in `failing` fail, every other name resolves to 127.0.0.1 and its port.
/// It records how many lookups ran at once, at most, and how many ran per name.
final class ScriptedResolver: Sendable {
    let hanging: Set<String>
    let failing: Set<String>
    private let gate = DispatchSemaphore(value: 0)
    private let released = Atomic<Bool>(false)
    private let entries = DispatchSemaphore(value: 0)
    private let running = Atomic<Int>(0)
    private let most = Atomic<Int>(0)
    private let calls = Mutex<[String: Int]>([:])

    init(hanging: Set<String> = [], failing: Set<String> = []) {
        self.hanging = hanging
        self.failing = failing
    }

    /// The resolver to inject.
    var resolver: BackendResolver.Resolver {
        { [self] host, port in try self.resolve(host, port) }
    }

    private func resolve(_ host: String, _ port: UInt16) throws -> [SocketAddress] {
        calls.withLock { $0[host, default: 0] += 1 }
        let now = running.add(1, ordering: .relaxed).newValue
        defer { running.subtract(1, ordering: .relaxed) }
        var seen = most.load(ordering: .relaxed)
        while now > seen {
            let (exchanged, original) = most.compareExchange(expected: seen, desired: now, ordering: .relaxed)
            if exchanged { break }
            seen = original
        }
        entries.signal()
        if hanging.contains(host) && !released.load(ordering: .acquiring) {
            gate.wait()
            gate.signal()  // pass the release on to the next waiter
        }
        if failing.contains(host) { throw ResolutionError(host: host, reason: "Temporary failure in name resolution") }
        return [SocketAddress(numericHost: "127.0.0.1", port: port)!]
    }

    /// Waits until `count` lookups have started in all (at most `seconds`).
    func waitForEntries(_ count: Int, seconds: Double = 5) -> Bool {
        for _ in 0..<count where entries.wait(timeout: .now() + seconds) == .timedOut { return false }
        return true
    }

    /// Lets every hanging lookup (and any later one) answer.
    func release() {
        released.store(true, ordering: .releasing)
        gate.signal()
    }

    /// The most lookups that ran at once.
    var mostAtOnce: Int { most.load(ordering: .relaxed) }

    /// How many lookups of `host` ran.
    func calls(of host: String) -> Int { calls.withLock { $0[host, default: 0] } }
}

/// Waits (bounded) for `resolver`'s answers until `count` have arrived, and returns them.
func answers(from resolver: BackendResolver, count: Int, seconds: Double = 5) -> [BackendResolver.Answer] {
    var taken: [BackendResolver.Answer] = []
    let deadline = MonotonicClock.nanoseconds() + UInt64(seconds * 1e9)
    while taken.count < count {
        let now = MonotonicClock.nanoseconds()
        if now >= deadline { break }
        _ = resolver.answered.wait(timeoutNanoseconds: deadline - now)
        resolver.answered.reset()
        taken += resolver.takeAnswers()
    }
    return taken
}

@Suite("Name lookups: their own threads, one per name, bounded, abandoned at a stop")
struct BackendResolverTests {
    @Test("a lookup that never answers holds one lookup: asking again starts nothing, and another name is answered meanwhile")
    func hangingNameDoesNotBlockOthers() throws {
        let script = ScriptedResolver(hanging: ["hang.test"])
        defer { script.release() }
        let resolver = try BackendResolver(resolver: script.resolver)
        let hang = BackendResolver.Name(host: "hang.test", port: 9)
        #expect(resolver.request(hang))
        #expect(script.waitForEntries(1))
        #expect(!resolver.request(hang), "a second request while the first is pending starts nothing")
        #expect(resolver.pendingSince(hang) != nil)
        #expect(resolver.request(BackendResolver.Name(host: "quick.test", port: 9)))
        let got = answers(from: resolver, count: 1)
        #expect(got.map(\.name.host) == ["quick.test"])
        #expect(script.calls(of: "hang.test") == 1)
        resolver.close()
    }

    @Test("at most maximumInFlight lookups run at once; the rest queue and run as slots free, each name once")
    func bounded() throws {
        let names = (0..<6).map { "n\($0).test" }
        let script = ScriptedResolver(hanging: Set(names))
        defer { script.release() }
        let resolver = try BackendResolver(resolver: script.resolver, maximumInFlight: 3)
        for name in names { #expect(resolver.request(BackendResolver.Name(host: name, port: 9))) }
        #expect(script.waitForEntries(3))
        script.release()
        let got = answers(from: resolver, count: names.count)
        #expect(Set(got.map(\.name.host)) == Set(names))
        #expect(script.mostAtOnce == 3)
        for name in names { #expect(script.calls(of: name) == 1) }
        resolver.close()
    }

    @Test("close returns at once and drops what a lookup still running answers later")
    func closeAbandons() throws {
        let script = ScriptedResolver(hanging: ["hang.test"])
        defer { script.release() }
        let resolver = try BackendResolver(resolver: script.resolver)
        #expect(resolver.request(BackendResolver.Name(host: "hang.test", port: 9)))
        #expect(script.waitForEntries(1))
        resolver.close()
        #expect(!resolver.request(BackendResolver.Name(host: "other.test", port: 9)), "a closed resolver starts nothing")
        script.release()
        // The abandoned lookup answers now; give it the time a wake-up takes, bounded.
        _ = resolver.answered.wait(timeoutNanoseconds: 200_000_000)
        #expect(resolver.takeAnswers().isEmpty)
    }

    @Test("start-up lookups run concurrently: a name whose lookup waits for another's still resolves")
    func concurrentStartup() throws {
        let otherStarted = DispatchSemaphore(value: 0)
        let observed = Atomic<Bool>(false)
        let resolver: BackendResolver.Resolver = { host, port in
            if host == "first.test" {
                // Sequential lookups would leave this waiting the full five seconds.
                observed.store(otherStarted.wait(timeout: .now() + 5) == .success, ordering: .relaxed)
            } else {
                otherStarted.signal()
            }
            return [SocketAddress(numericHost: host == "first.test" ? "127.0.0.11" : "127.0.0.12", port: port)!]
        }
        let backends = try ["first.test:9", "second.test:9", "127.0.0.13:9"].map { try BackendAddress(parsing: $0) }
        let addresses = try BackendLookup(backends: backends, resolver: resolver).wait()
        let sawOther = observed.load(ordering: .relaxed)
        #expect(sawOther)
        #expect(addresses.map(\.description) == ["127.0.0.11:9", "127.0.0.12:9", "127.0.0.13:9"])
    }

    @Test("a start-up lookup that never answers fails after the limit, naming the backend, as the resolver's fault")
    func startupLimit() throws {
        let script = ScriptedResolver(hanging: ["never.test"])
        defer { script.release() }
        let backends = try ["127.0.0.1:9", "never.test:9000"].map { try BackendAddress(parsing: $0) }
        let lookup = try BackendLookup(backends: backends, resolver: script.resolver, limitNanoseconds: 200_000_000)
        let error = try #require(throws: BackendResolutionError.self) { try lookup.wait() }
        #expect(error.backend.description == "never.test:9000")
        #expect(error.reason.hasPrefix("no answer from the resolver after "), "\(error.reason)")
        #expect(error.description.hasPrefix("resolve backend never.test:9000: no answer from the resolver after "))
        #expect(error.description.hasSuffix(" (resolver)"))
    }

    @Test("a name the resolver fails is reported with the resolver's reason")
    func startupFailure() throws {
        let script = ScriptedResolver(failing: ["broken.test"])
        let backends = try ["ok.test:9", "broken.test:9"].map { try BackendAddress(parsing: $0) }
        let error = try #require(throws: BackendResolutionError.self) {
            try BackendLookup(backends: backends, resolver: script.resolver).wait()
        }
        #expect(error.description == "resolve backend broken.test:9: Temporary failure in name resolution (resolver)")
    }

    @Test("a relay whose backend name never answers at start-up fails with the resolver's error, within the limit")
    func relayStartupLimit() throws {
        let script = ScriptedResolver(hanging: ["never.test"])
        defer { script.release() }
        var configuration = RelayConfiguration(backends: [try BackendAddress(parsing: "never.test:9000")])
        configuration.bindHost = "127.0.0.1"
        configuration.port = 0
        let error = try #require(throws: BackendResolutionError.self) {
            try Relay(configuration: configuration, logger: .init(label: "test"), resolver: script.resolver, resolverLimitNanoseconds: 100_000_000)
        }
        #expect(error.backend.host == "never.test")
    }
}
