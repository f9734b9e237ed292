/// One message of the takeover protocol on the control socket (`--control-socket`), carried
/// in one frame (`UnixStreamSocket.sendFrame`: a 4-byte length, at most 4 096 bytes).
///
/// A message is printable ASCII: a verb, then `key=value` fields separated by spaces; a
/// `reason=` field, when present, is the last and runs to the end (it may hold spaces).
/// ```
/// takeover version=4 threads=2 listeners=127.0.0.1:8125,tcp:127.0.0.1:8126  new → old
/// refused code=mismatch reason=listeners differ: …                    old → new
/// offer version=4 threads=2 listeners=2 pid=4242                      old → new
/// sockets index=0 address=127.0.0.1:8125 drops=17,0   (+ one socket per worker, SCM_RIGHTS)
/// sockets index=1 address=tcp:127.0.0.1:8126         (+ one listening socket per worker)
/// ready                                                               new → old
/// failed reason=bind …                                                new → old
/// stopping                                                            old → new
/// done received=1000 forwarded=1000 dropped=0                         old → new
/// ```
/// The handshake and what each side does in between: docs/operations.md, "Upgrade".
///
/// Versions: the new relay asks for the newest it speaks; an old relay that speaks only an
/// older one refuses (`code=version`) and the new relay asks again with that one. The offer
/// names the version both then speak. Version 2 adds `drops=` to `sockets`: per worker, the
/// socket's kernel drop counter when the old relay stopped counting it (`-`: unknown).
/// Version 3 adds the TCP ingest listeners: named `tcp:ADDR` after the datagram listeners in
/// `takeover`'s list, each handed over in a `sockets` frame of its own (`address=tcp:ADDR`, no
/// `drops=`) carrying every worker's listening socket; a version 2 request names none, and an
/// old relay then hands over its datagram listeners alone.
/// Version 4 adds `stopping`: the old relay's answer to `ready`, sent before it stops, once it
/// has given the sockets up for good. Until then the new relay does not own them: without it
/// (a `ready` that came after the old relay stopped waiting, a connection that broke) the new
/// relay cannot tell whether the old one stops or carries on, and leaves the sockets alone.
public enum TakeoverMessage: Equatable, Sendable {
    /// The new process asks for the listening sockets, saying what it would run.
    case takeover(version: Int, threads: Int, listeners: [String])
    /// The old process will not hand over: why, and what kind of reason (`RefusalCode`).
    case refused(code: RefusalCode, reason: String)
    /// The old process hands over: `listeners` `sockets` messages follow.
    case offer(version: Int, threads: Int, listeners: Int, pid: Int32)
    /// Listener `index` (bound to `address`): the frame carries one socket per worker; from
    /// version 2, each one's kernel drop counter where the old relay stopped counting it.
    case sockets(index: Int, address: String, drops: [UInt32?]? = nil)
    /// The new process relays on the sockets: the old one may stop.
    case ready
    /// The new process could not start on the sockets: the old one keeps running.
    case failed(reason: String)
    /// The old process took `ready` and stops: the sockets are the new one's from now on, and
    /// never again the old one's (version 4).
    case stopping
    /// The old process has stopped and sent every batch: its final counts.
    case done(received: UInt64, forwarded: UInt64, dropped: UInt64)

    /// The newest protocol version this relay speaks (and asks for).
    public static let version = 4
    /// The first version that hands over TCP ingest listeners.
    public static let tcpVersion = 3
    /// The first version in which the old relay answers `ready` with `stopping`.
    public static let stoppingVersion = 4
    /// Every version this relay speaks.
    public static let versions: ClosedRange<Int> = 1...version

    /// Why an old process refused a takeover.
    public enum RefusalCode: String, Sendable {
        /// The new process's listeners or thread count differ from the running ones (exit 64).
        case mismatch
        /// Another takeover is under way, or the relay is not (or no longer) running (exit 75).
        case busy
        /// The message was not understood (exit 75 for a relay that sent it).
        case malformed
        /// The peer speaks another protocol version (exit 64).
        case version
    }

    /// The message as sent.
    public var encoded: [UInt8] {
        let text: String = switch self {
        case .takeover(let version, let threads, let listeners):
            "takeover version=\(version) threads=\(threads) listeners=\(listeners.joined(separator: ","))"
        case .refused(let code, let reason): "refused code=\(code.rawValue) reason=\(Self.printable(reason))"
        case .offer(let version, let threads, let listeners, let pid): "offer version=\(version) threads=\(threads) listeners=\(listeners) pid=\(pid)"
        case .sockets(let index, let address, let drops):
            "sockets index=\(index) address=\(address)" + (drops.map { " drops=" + $0.map { $0.map(String.init) ?? "-" }.joined(separator: ",") } ?? "")
        case .ready: "ready"
        case .stopping: "stopping"
        case .failed(let reason): "failed reason=\(Self.printable(reason))"
        case .done(let received, let forwarded, let dropped): "done received=\(received) forwarded=\(forwarded) dropped=\(dropped)"
        }
        return Array(text.utf8.prefix(4_096))
    }

    /// Parses one message, or returns `nil` for anything else: bytes outside printable ASCII,
    /// an unknown verb, a field missing or not a number where one is wanted.
    public init?(decoding bytes: [UInt8]) {
        guard !bytes.isEmpty, bytes.count <= 4_096, bytes.allSatisfy({ $0 >= 0x20 && $0 < 0x7f }) else { return nil }
        var text = String(decoding: bytes, as: UTF8.self)
        var reason: String?
        if let range = text.range(of: " reason=") {
            reason = String(text[range.upperBound...])
            text = String(text[..<range.lowerBound])
        }
        let words = text.split(separator: " ", omittingEmptySubsequences: false)
        guard let verb = words.first else { return nil }
        var fields: [String: String] = [:]
        for word in words.dropFirst() {
            guard let equals = word.firstIndex(of: "="), fields[String(word[..<equals])] == nil else { return nil }
            fields[String(word[..<equals])] = String(word[word.index(after: equals)...])
        }
        func number<T: FixedWidthInteger>(_ key: String, _: T.Type = Int.self) -> T? { fields[key].flatMap { T($0) } }
        switch verb {
        case "takeover":
            guard fields.count == 3, reason == nil, let version = number("version"), let threads = number("threads"),
                  let listeners = fields["listeners"], !listeners.isEmpty else { return nil }
            self = .takeover(version: version, threads: threads, listeners: listeners.split(separator: ",").map(String.init))
        case "refused":
            guard fields.count == 1, let code = fields["code"].flatMap(RefusalCode.init(rawValue:)), let reason else { return nil }
            self = .refused(code: code, reason: reason)
        case "offer":
            guard fields.count == 4, reason == nil, let version = number("version"), let threads = number("threads"),
                  let listeners = number("listeners"), let pid = number("pid", Int32.self) else { return nil }
            self = .offer(version: version, threads: threads, listeners: listeners, pid: pid)
        case "sockets":
            guard fields.count == (fields["drops"] == nil ? 2 : 3), reason == nil, let index = number("index"),
                  let address = fields["address"], !address.isEmpty else { return nil }
            var drops: [UInt32?]?
            if let list = fields["drops"] {
                var values: [UInt32?] = []
                for item in list.split(separator: ",", omittingEmptySubsequences: false) {
                    if item == "-" {
                        values.append(nil)
                    } else {
                        guard let value = UInt32(item) else { return nil }
                        values.append(value)
                    }
                }
                drops = values
            }
            self = .sockets(index: index, address: address, drops: drops)
        case "ready":
            guard fields.isEmpty, reason == nil else { return nil }
            self = .ready
        case "stopping":
            guard fields.isEmpty, reason == nil else { return nil }
            self = .stopping
        case "failed":
            guard fields.isEmpty, let reason else { return nil }
            self = .failed(reason: reason)
        case "done":
            guard fields.count == 3, reason == nil, let received = number("received", UInt64.self),
                  let forwarded = number("forwarded", UInt64.self), let dropped = number("dropped", UInt64.self) else { return nil }
            self = .done(received: received, forwarded: forwarded, dropped: dropped)
        default:
            return nil
        }
    }

    /// `text` with anything outside printable ASCII replaced by `?`, at most 1 000 characters:
    /// what a reason may carry on the wire.
    static func printable(_ text: String) -> String {
        String(text.unicodeScalars.prefix(1_000).map { $0.value >= 0x20 && $0.value < 0x7f ? Character($0) : "?" })
    }

    /// A peer's reason as it may be logged: printable, at most 200 characters.
    public static func loggable(_ reason: String) -> String {
        let cut = printable(reason)
        return cut.count > 200 ? String(cut.prefix(200)) + "…" : cut
    }

    /// The verb alone, for logs (never the fields: they come from the wire).
    public var verb: String {
        switch self {
        case .takeover: "takeover"
        case .refused: "refused"
        case .offer: "offer"
        case .sockets: "sockets"
        case .ready: "ready"
        case .stopping: "stopping"
        case .failed: "failed"
        case .done: "done"
        }
    }
}
