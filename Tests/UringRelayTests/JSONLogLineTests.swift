import Foundation
import Logging
import Testing
@testable import UringRelay

@Suite("JSON log lines (--log-format json)")
struct JSONLogLineTests {
    /// Parses one rendered line with Foundation's parser (independent of the renderer).
    static func parse(_ line: String) throws -> [String: Any] {
        #expect(line.hasSuffix("}\n"))
        #expect(line.dropLast().allSatisfy { $0 != "\n" }, "one line per event")
        let object = try JSONSerialization.jsonObject(with: Data(line.utf8))
        return try #require(object as? [String: Any])
    }

    @Test("every field parses back to what was logged: quotes, backslashes, control characters, non-ASCII, U+2028",
          arguments: ["plain", "quote \" and \\ backslash", "line\nfeed\r\ttab\u{08}\u{0C}", "nul \u{00} and \u{1F} and \u{7F}",
                      "éè 日本 🎉", "js \u{2028} \u{2029} separators"])
    func escaping(text: String) throws {
        let line = JSONLogLine.render(
            level: .warning, message: text, label: "statsrelay", source: "UringRelay",
            metadata: ["backend": "10.0.0.1:8125", "reason": .string(text)], unixSeconds: 0)
        let object = try Self.parse(line)
        #expect(object["message"] as? String == text)
        #expect(object["reason"] as? String == text)
        #expect(object["backend"] as? String == "10.0.0.1:8125")
        #expect(object["level"] as? String == "warning")
        #expect(object["label"] as? String == "statsrelay")
        #expect(object["source"] as? String == "UringRelay")
    }

    @Test("nested metadata is JSON arrays and objects; a key shadowing a fixed one is prefixed; an error is its own key")
    func structure() throws {
        let metadata: Logger.Metadata = [
            "list": ["a", "b"], "map": ["k": "v", "n": ["x"]], "message": "shadow", "count": .stringConvertible(42),
        ]
        let object = try Self.parse(JSONLogLine.render(
            level: .info, message: "m", label: "l", source: "s", metadata: metadata, error: "boom", unixSeconds: 0))
        #expect(object["list"] as? [String] == ["a", "b"])
        let map = try #require(object["map"] as? [String: Any])
        #expect(map["k"] as? String == "v")
        #expect(map["n"] as? [String] == ["x"])
        #expect(object["message"] as? String == "m")
        #expect(object["metadata.message"] as? String == "shadow")
        #expect(object["count"] as? String == "42")
        #expect(object["error"] as? String == "boom")
    }

    @Test("the time is UTC with milliseconds, as Foundation's ISO 8601 formatter writes it", arguments: [0, 1_764_744_000.25, 1_000_000_000.999])
    func timestamp(seconds: Double) throws {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        formatter.timeZone = TimeZone(identifier: "UTC")
        let object = try Self.parse(JSONLogLine.render(level: .info, message: "m", label: "l", source: "s", metadata: [:], unixSeconds: seconds))
        let expected = formatter.string(from: Date(timeIntervalSince1970: (seconds * 1_000).rounded(.down) / 1_000))
        #expect(object["time"] as? String == expected)
    }

    @Test("bounded: a long message and value are cut on a character boundary, keys past the most are counted, deep nesting is text")
    func bounds() throws {
        let long = String(repeating: "é", count: 10_000)  // 2 bytes each
        var metadata: Logger.Metadata = ["long": .string(long)]
        for index in 0..<100 { metadata[String(format: "k%03d", index)] = "v" }
        var deep: Logger.MetadataValue = "bottom"
        for _ in 0..<10 { deep = .array([deep]) }
        metadata["deep"] = deep
        let line = JSONLogLine.render(level: .info, message: long, label: "l", source: "s", metadata: metadata, unixSeconds: 0)
        let object = try Self.parse(line)
        let message = try #require(object["message"] as? String)
        #expect(message.utf8.count <= JSONLogLine.maximumMessageBytes + "…".utf8.count)
        #expect(message.hasSuffix("…") && message.dropLast().allSatisfy { $0 == "é" })
        // 102 keys: "deep", "k000"…"k099", "long"; the first 64 in key order are written.
        #expect(object["metadata_dropped"] as? Int == 102 - JSONLogLine.maximumMetadataKeys)
        #expect(object["k062"] as? String == "v" && object["k063"] == nil)
        #expect(line.utf8.count < 8_192)
        let nested = try #require(object["deep"] as? [Any])
        let third = try #require(((nested[0] as? [Any])?[0] as? [Any])?[0])
        #expect(third is String, "nesting past the limit is written as text")
    }
}
