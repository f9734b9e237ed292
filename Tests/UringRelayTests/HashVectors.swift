import Foundation
import Testing
@testable import UringRelay

/// The rows of `Tests/Vectors/hash-vectors.tsv`, written by `Tests/Vectors/hash_vectors.py` from
/// the etsy and ketama algorithms' definitions with Python's `hashlib.md5` (see the script for
/// the definitions and the row formats). Nothing in them comes from the relay's code.
enum HashVectors {
    /// One `route` row: where `name` goes on `backends`' ring.
    struct Route: Sendable {
        var name: String
        var value: UInt32
        var owner: Int
    }

    /// The routes of one pool of one mode.
    struct Pool: Sendable, CustomTestStringConvertible {
        var mode: HashMode
        var backends: [String]
        var routes: [Route]
        var testDescription: String { "\(mode) over \(backends.count) backends: \(backends.prefix(3).joined(separator: ","))" }
    }

    /// One `points` row: how many points each backend gets.
    struct Points: Sendable, CustomTestStringConvertible {
        var mode: HashMode
        var backends: [String]
        var counts: [Int]
        var testDescription: String { "\(mode) \(counts.count) backends, weights \(backends.map { $0.split(separator: "=").dropFirst().first ?? "1" }.joined(separator: ","))" }
    }

    /// The `ring` rows of one pool: the whole sorted ring.
    struct Ring: Sendable, CustomTestStringConvertible {
        var mode: HashMode
        var backends: [String]
        var points: [UInt32]
        var owners: [Int]
        var testDescription: String { "\(mode) \(backends.joined(separator: ","))" }
    }

    /// One `md5` or `md5s` row.
    struct Digest: Sendable, CustomTestStringConvertible {
        var message: [UInt8]
        var hex: String
        var testDescription: String { "\(message.count) bytes" }
    }

    /// The file's tab-separated fields, comments dropped (empty if it cannot be read).
    static let rows: [[String]] = {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Vectors/hash-vectors.tsv")
        guard let text = try? String(contentsOf: url, encoding: .utf8) else { return [] }
        return text.split(separator: "\n").filter { !$0.hasPrefix("#") }.map {
            $0.split(separator: "\t", omittingEmptySubsequences: false).map(String.init)
        }
    }()

    static let pools: [Pool] = {
        var pools: [Pool] = []
        for row in rows where row[0] == "route" {
            let mode = HashMode(rawValue: row[1])!
            let backends = row[2].split(separator: ",").map(String.init)
            let route = Route(name: row[3], value: UInt32(row[4], radix: 16)!, owner: Int(row[5])!)
            if let last = pools.last, last.mode == mode, last.backends == backends {
                pools[pools.count - 1].routes.append(route)
            } else {
                pools.append(Pool(mode: mode, backends: backends, routes: [route]))
            }
        }
        return pools
    }()

    static let points: [Points] = rows.filter { $0[0] == "points" }.map { row in
        Points(
            mode: HashMode(rawValue: row[1])!, backends: row[2].split(separator: ",").map(String.init),
            counts: row[3].split(separator: ",").map { Int($0)! })
    }

    static let rings: [Ring] = {
        var rings: [Ring] = []
        for row in rows where row[0] == "ring" {
            let mode = HashMode(rawValue: row[1])!
            let backends = row[2].split(separator: ",").map(String.init)
            if rings.last.map({ $0.mode != mode || $0.backends != backends }) ?? true {
                rings.append(Ring(mode: mode, backends: backends, points: [], owners: []))
            }
            rings[rings.count - 1].points.append(UInt32(row[3], radix: 16)!)
            rings[rings.count - 1].owners.append(Int(row[4])!)
        }
        return rings
    }()

    static let digests: [Digest] = rows.compactMap { row in
        switch row[0] {
        case "md5": Digest(message: (0..<Int(row[1])!).map { UInt8($0 % 251) }, hex: row[2])
        case "md5s": Digest(message: Array(row[1].utf8), hex: row[2])
        default: nil
        }
    }

    /// The backends of a row, parsed as the relay parses them.
    static func parse(_ backends: [String]) throws -> [BackendAddress] {
        try backends.map { try BackendAddress(parsing: $0) }
    }
}
