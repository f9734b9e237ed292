@testable import RelayKernel
import Testing
@testable import UringRelay

/// Scans a whole datagram and renders each step as text, for table comparisons.
///
/// - Parameter checked: check the datagram once for NUL and `\r` first and tell the scanner,
///   as the relay does (its fast path for datagrams without them); otherwise the scanner
///   looks in every line.
func scan(_ text: [UInt8], checked: Bool = true) -> [String] {
    var results: [String] = []
    text.withUnsafeBytes { raw in
        let datagram = raw.bytes
        var offset = 0
        let mayContainNul = !checked || datagram.contains(byte: 0)
        let mayContainCarriageReturn = !checked || datagram.contains(byte: UInt8(ascii: "\r"))
        while let line = LineScanner.next(
            in: datagram, from: &offset, mayContainNul: mayContainNul, mayContainCarriageReturn: mayContainCarriageReturn
        ) {
            switch line {
            case .valid(let start, let end, let key):
                let name = String(decoding: text[key], as: UTF8.self)
                let whole = String(decoding: text[start..<end], as: UTF8.self)
                results.append("ok \(name) \(whole)")
            case .empty:
                results.append("empty")
            case .malformed(let reason):
                results.append("bad \(reason)")
            }
        }
    }
    return results
}

@Suite("StatsD line scanner")
struct LineScannerTests {
    /// brubeck-style `must_parse`: datagrams and the lines forwarded from them.
    @Test(arguments: [
        ("foo:1|c", ["ok foo foo:1|c"]),
        ("foo:1|c\n", ["ok foo foo:1|c"]),
        ("foo:1|c\r\n", ["ok foo foo:1|c"]),
        ("foo:1|c\r\nbar:2|ms|@0.1\r\n", ["ok foo foo:1|c", "ok bar bar:2|ms|@0.1"]),
        ("a:1|c\nb:2|g\nc:3|s", ["ok a a:1|c", "ok b b:2|g", "ok c c:3|s"]),
        ("http.req:1|c|#env:prod,svc:web", ["ok http.req http.req:1|c|#env:prod,svc:web"]),
        ("name:with:colons:1|c", ["ok name name:with:colons:1|c"]),
        ("x:", ["ok x x:"]),
        // Only "\n" ends a line (the Datadog agent's and statsd's rule): a "\r" elsewhere than
        // right before it, or at the datagram's end, is a byte of the line.
        ("a:1|c\rb:2|c", ["ok a a:1|c\rb:2|c"]),
        ("a:1|c\rb:2|c\r", ["ok a a:1|c\rb:2|c"]),
        ("a:1|c\r\rb:2|c", ["ok a a:1|c\r\rb:2|c"]),
        ("a:1|c\r\r\nb:2|c", ["ok a a:1|c\r", "ok b b:2|c"]),
        ("a:1|c\n\rb:2|c\r\nc:3|c", ["ok a a:1|c", "ok \rb \rb:2|c", "ok c c:3|c"]),
        ("a:1|c\nb:2|c\rc:3|c", ["ok a a:1|c", "ok b b:2|c\rc:3|c"]),
        // An event's text and a service check's message keep their "\r" (clients escape only
        // "\n"): the header's lengths count it, and nothing after it becomes a metric.
        ("_e{6,13}:deploy|line1\r\\nline2|#env:prod\n", ["ok deploy _e{6,13}:deploy|line1\r\\nline2|#env:prod"]),
        ("_sc|db.ping|2|#env:prod|m:timeout\r\\nretrying\r\n", ["ok db.ping _sc|db.ping|2|#env:prod|m:timeout\r\\nretrying"]),
        ("gauge:-10|g\n\n\nnext:1|c", ["ok gauge gauge:-10|g", "empty", "empty", "ok next next:1|c"]),
    ])
    func forwards(_ datagram: String, _ expected: [String]) {
        #expect(scan(Array(datagram.utf8)) == expected)
        #expect(scan(Array(datagram.utf8), checked: false) == expected)
    }

    /// `must_not_parse`: lines dropped, with their reason, and the lines around them intact.
    @Test(arguments: [
        ("nocolon", ["bad missingColon"]),
        (":1|c", ["bad emptyName"]),
        ("good:1|c\n:1|c\nalso:2|c", ["ok good good:1|c", "bad emptyName", "ok also also:2|c"]),
        ("bad line\ngood:1|c", ["bad missingColon", "ok good good:1|c"]),
        // A "\r" inside a line does not split it.
        ("\r:1|c", ["ok \r \r:1|c"]),
        ("a\rb\nc:1|c", ["bad missingColon", "ok c c:1|c"]),
        ("\n", ["empty"]),
        ("\r\n", ["empty"]),
        ("\r", ["empty"]),
        ("\r\r\n", ["bad missingColon"]),
        ("", []),
    ])
    func drops(_ datagram: String, _ expected: [String]) {
        #expect(scan(Array(datagram.utf8)) == expected)
        #expect(scan(Array(datagram.utf8), checked: false) == expected)
    }

    @Test("a NUL anywhere in a line drops that line only")
    func nulByte() {
        let datagram: [UInt8] = Array("a:1|c\nb:\u{0}2|c\nc\u{0}:3|c\nd:4|c".utf8)
        #expect(scan(datagram) == ["ok a a:1|c", "bad nulByte", "bad nulByte", "ok d d:4|c"])
    }

    @Test("a line the size of a whole datagram, with and without a trailing newline")
    func longLine() {
        let name = String(repeating: "n", count: 5000)
        let value = String(repeating: "7", count: 3000)
        let line = "\(name):\(value)|g"
        #expect(scan(Array(line.utf8)) == ["ok \(name) \(line)"])
        #expect(scan(Array((line + "\n").utf8)) == ["ok \(name) \(line)"])
    }

    @Test("every byte value but NUL and \\n passes through unchanged, \\r inside the line too", arguments: [true, false])
    func binarySafe(checked: Bool) {
        // Every byte value but NUL and "\n", after the name, as one line: the scanner must hand
        // back exactly these bytes (compared as bytes: most are not valid UTF-8).
        var line: [UInt8] = Array("k:".utf8)
        line += (1...255).map(UInt8.init).filter { $0 != UInt8(ascii: "\n") }
        #expect(line.count == 2 + 254)
        for ending in [[], [UInt8(ascii: "\n")], Array("\r\n".utf8)] as [[UInt8]] {
            let datagram = line + ending
            var found: [(bytes: [UInt8], name: [UInt8])] = []
            var others: [LineScanner.Line] = []
            datagram.withUnsafeBytes { raw in
                var offset = 0
                while let next = LineScanner.next(
                    in: raw.bytes, from: &offset, mayContainNul: !checked, mayContainCarriageReturn: true
                ) {
                    if case .valid(let start, let end, let key) = next {
                        found.append((Array(datagram[start..<end]), Array(datagram[key])))
                    } else {
                        others.append(next)
                    }
                }
            }
            #expect(found.count == 1 && others.isEmpty, "ending \(ending): \(others)")
            #expect(found.first?.bytes == line, "ending \(ending)")
            #expect(found.first?.name == Array("k".utf8))
        }
    }
}
