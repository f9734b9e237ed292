import RelayKernel
import Testing
@testable import UringRelay

/// The takeover protocol's messages (docs/operations.md, "Upgrade").
@Suite("Takeover messages")
struct TakeoverMessageTests {
    @Test("each message reads back as written", arguments: [
        TakeoverMessage.takeover(version: 1, threads: 4, listeners: ["127.0.0.1:8125", "[::1]:8125"]),
        .refused(code: .mismatch, reason: "threads differ: the running relay has 2 workers"),
        .refused(code: .busy, reason: "another takeover is under way"),
        .offer(version: 1, threads: 2, listeners: 3, pid: 4242),
        .sockets(index: 2, address: "[::1]:8125"),
        .sockets(index: 0, address: "127.0.0.1:8125", drops: [17, nil, 4_294_967_295]),
        .ready,
        .stopping,
        .failed(reason: "bind udp 0.0.0.0:8125: Address already in use (errno 98)"),
        .done(received: 100, forwarded: 99, dropped: 1),
    ])
    func roundTrip(message: TakeoverMessage) {
        #expect(TakeoverMessage(decoding: message.encoded) == message)
    }

    @Test("the wire form is the documented text")
    func wireForm() {
        #expect(String(decoding: TakeoverMessage.takeover(version: 1, threads: 2, listeners: ["127.0.0.1:8125", "[::1]:8125"]).encoded, as: UTF8.self)
            == "takeover version=1 threads=2 listeners=127.0.0.1:8125,[::1]:8125")
        #expect(String(decoding: TakeoverMessage.done(received: 3, forwarded: 2, dropped: 1).encoded, as: UTF8.self)
            == "done received=3 forwarded=2 dropped=1")
        #expect(String(decoding: TakeoverMessage.stopping.encoded, as: UTF8.self) == "stopping")
        // Version 1's form has no drops; version 2 adds them, `-` for a counter not known.
        #expect(String(decoding: TakeoverMessage.sockets(index: 1, address: "127.0.0.1:8125").encoded, as: UTF8.self)
            == "sockets index=1 address=127.0.0.1:8125")
        #expect(String(decoding: TakeoverMessage.sockets(index: 1, address: "127.0.0.1:8125", drops: [5, nil]).encoded, as: UTF8.self)
            == "sockets index=1 address=127.0.0.1:8125 drops=5,-")
    }

    @Test("anything else is not a message", arguments: [
        "", "hello", "ready now", "ready extra=1", "takeover version=1 threads=2", "takeover version=x threads=2 listeners=a",
        "takeover version=1 threads=2 listeners=", "takeover version=1 version=1 threads=2 listeners=a",
        "refused code=bogus reason=x", "refused code=busy", "offer version=1 threads=2 listeners=1 pid=big",
        "sockets index=0", "sockets index=0 address=a drops=1,x", "sockets index=0 address=a drops=4294967296",
        "sockets index=0 address=a drops=1,,2", "sockets index=0 address=a extra=1", "failed", "done received=1 forwarded=2", "done received=-1 forwarded=2 dropped=0",
        "ready\n", "ready\u{7f}", "stopping now", "stopping pid=1", "stopping reason=x",
    ])
    func rejects(text: String) {
        #expect(TakeoverMessage(decoding: Array(text.utf8)) == nil)
    }

    @Test("bytes outside printable ASCII are refused, and a reason is logged printable and cut to 200 characters")
    func printable() {
        #expect(TakeoverMessage(decoding: [0x72, 0x65, 0x61, 0x64, 0x79, 0x00]) == nil)
        #expect(TakeoverMessage(decoding: Array("failed reason=caf\u{e9}".utf8)) == nil)
        let long = String(repeating: "x", count: 500) + "\u{1b}[31m"
        let logged = TakeoverMessage.loggable(long)
        #expect(logged == String(repeating: "x", count: 200) + "…")
        #expect(TakeoverMessage.loggable("a\u{1b}b\nc") == "a?b?c")
        #expect(TakeoverMessage.refused(code: .busy, reason: "a\nb").encoded == Array("refused code=busy reason=a?b".utf8))
    }
}

/// What `--control-socket` adds to the descriptors a relay needs.
@Suite("Takeover: descriptor budget")
struct TakeoverDescriptorBudgetTests {
    @Test("with a control socket, each worker keeps a copy of each listening socket, and the control socket is one more")
    func budget() throws {
        var configuration = RelayConfiguration(backends: [try BackendAddress(parsing: "127.0.0.1:1")])
        configuration.threads = 4
        configuration.admin = "none"
        configuration.additionalListeners = [SocketAddress(numericHost: "127.0.0.1", port: 9000)!]
        let without = StartupDiagnosis.descriptorsNeeded(configuration, alreadyOpen: 3)
        configuration.controlSocket = "/run/statsrelay/control.sock"
        let with = StartupDiagnosis.descriptorsNeeded(configuration, alreadyOpen: 3)
        #expect(with.takeoverCopies == 2)
        #expect(with.total == without.total + 4 * 2 + 1)
    }
}

/// The listener set held by one of a takeover and a reload at a time (`ListenerRegistry`).
@Suite("Listener set: a takeover and a reload exclude each other")
struct ListenerSetUseTests {
    @Test("while one use holds it the other is refused; only the holder gives it back", arguments: [
        (ListenerRegistry.ListenerSetUse.takeover, ListenerRegistry.ListenerSetUse.reload),
        (.reload, .takeover),
    ])
    func exclusion(_ holder: ListenerRegistry.ListenerSetUse, _ other: ListenerRegistry.ListenerSetUse) {
        let registry = ListenerRegistry(keepsCopies: false)
        #expect(registry.takeListenerSet(for: holder))
        #expect(!registry.takeListenerSet(for: other))
        #expect(!registry.takeListenerSet(for: holder))
        registry.releaseListenerSet(from: other)
        #expect(!registry.takeListenerSet(for: other), "released by the one that does not hold it")
        registry.releaseListenerSet(from: holder)
        #expect(registry.takeListenerSet(for: other))
    }
}
