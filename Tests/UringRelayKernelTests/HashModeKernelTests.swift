@testable import RelayKernel
import Foundation
import Glibc
import Testing
@testable import UringRelay

/// Where `Tests/Vectors/hash_vectors.py` (the independent etsy and ketama implementation) puts
/// `names` on `backends`: the backend index of each, from a run of the script.
///
/// - Throws: a skip (test cancelled) where python3 is not installed.
func independentRoutes(mode: HashMode, backends: [String], names: [String]) throws -> [Int] {
    let python = try RelayLauncher.requirePython()
    let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Vectors/hash_vectors.py")
    let input = FileManager.default.temporaryDirectory.appendingPathComponent("statsrelay-routes-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).txt")
    try names.joined(separator: "\n").appending("\n").write(to: input, atomically: true, encoding: .utf8)
    defer { try? FileManager.default.removeItem(at: input) }
    let process = Process()
    process.executableURL = python
    process.arguments = [script.path, "route", mode.rawValue, backends.joined(separator: ",")]
    process.standardInput = try FileHandle(forReadingFrom: input)
    let output = Pipe()
    process.standardOutput = output
    try process.run()
    let printed = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    process.waitUntilExit()
    try #require(process.terminationStatus == 0)
    let routes = printed.split(separator: "\n").compactMap { Int($0) }
    try #require(routes.count == names.count)
    return routes
}

/// The rows of `Tests/Vectors/hash-vectors.tsv` of one kind.
func hashVectorRows(_ kind: String) throws -> [[String]] {
    let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Vectors/hash-vectors.tsv")
    return try String(contentsOf: url, encoding: .utf8).split(separator: "\n")
        .map { $0.split(separator: "\t", omittingEmptySubsequences: false).map(String.init) }
        .filter { $0[0] == kind }
}

@Suite("Hash modes in the relay and in statsrelay hash", .serialized, .timeLimit(.minutes(1)), .onOwnThread)
struct HashModeKernelTests {
    static let ringModes: [HashMode] = [.etsy, .ketama]

    /// Lines of many names, none repeated within a datagram's neighbourhood.
    static let lines = (0..<1_200).map { "hm.svc-\($0 % 37).requests.\($0):1|c" }

    @Test("--hash MODE: each line reaches the backend the independent implementation names; /metrics shows the mode and its fingerprint",
          arguments: HashMode.allCases, ioDrivers)
    func relayRoutesByMode(_ mode: HashMode, driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backends = try (0..<3).map { _ in try TestBackend() }
        let specs = backends.map(\.spec)
        let names = Self.lines.map(metricName)
        // jump has published vectors of its own (HashTests); the ring modes are checked against
        // the Python implementation.
        let routes = mode == .jump
            ? names.map { Router(backendCount: 3).backend(forName: $0) }
            : try independentRoutes(mode: mode, backends: specs, names: names)
        if mode != .jump {
            let jump = names.map { Router(backendCount: 3).backend(forName: $0) }
            #expect(zip(routes, jump).filter { $0 != $1 }.count > names.count / 3, "the modes must differ for this test to tell them apart")
        }
        let relay = try RelayProcess(driver: driver, [
            "--hash", mode.rawValue, "--admin", "127.0.0.1:0", "--bind", "127.0.0.1", "--port", "0", "--threads", "1",
        ] + specs)
        defer {
            relay.signal(SIGTERM)
            _ = relay.waitForExit()
        }
        let address = try relay.listenAddress()
        #expect(relay.logLine(containing: "listening on ")?.contains("hash=\(mode.rawValue)") == true)
        let datagrams = stride(from: 0, to: Self.lines.count, by: 6).map { Self.lines[$0..<min($0 + 6, Self.lines.count)].joined(separator: "\n") }
        try send(datagrams, to: address)
        let received = try collect(from: backends, expectedLines: Self.lines.count)
        for backend in 0..<3 {
            let expected = zip(Self.lines, routes).filter { $1 == backend }.map(\.0)
            #expect(received.lines[backend].sorted() == expected.sorted(), "backend \(backend)")
        }
        let admin = try adminAddress(of: relay)
        let (samples, _) = try scrape(admin)
        let pool = BackendPool(
            backends: try specs.map { try BackendAddress(parsing: $0) }, addresses: backends.map(\.address), hashMode: mode, policy: .rehash)
        #expect(value(samples, "statsrelay_ring_fingerprint_info", ["hash_mode": mode.rawValue, "fingerprint": pool.ringFingerprint]) == 1)
    }

    @Test("rehash on a ring, a backend's TCP check failing: lines go where the peers' ring without it sends them",
          arguments: ringModes, ioDrivers)
    func ringRehash(_ mode: HashMode, driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let harness = try HealthHarness(driver: driver, policy: .rehash) { $0.hashMode = mode }
        defer { _ = harness.stop() }
        harness.healthPorts[1].close()
        #expect(harness.wait(for: 1, .down))
        let specs = harness.backends.map(\.spec)
        let names = Self.lines.map(metricName)
        // Three backends to two keeps every live backend's point count (40 etsy, 160 ketama),
        // so proxy.js's ring.remove and twemproxy's auto_eject_hosts give exactly these.
        let live = try independentRoutes(mode: mode, backends: [specs[0], specs[2]], names: names).map { $0 == 0 ? 0 : 2 }
        let healthy = try independentRoutes(mode: mode, backends: specs, names: names)
        try send(Self.lines, to: harness.address)
        let received = try collect(from: harness.backends, expectedLines: Self.lines.count)
        for backend in [0, 2] {
            let expected = zip(Self.lines, live).filter { $1 == backend }.map(\.0)
            #expect(received.lines[backend].sorted() == expected.sorted(), "backend \(backend)")
        }
        #expect(received.lines[1].isEmpty)
        // Only the dead backend's names moved.
        #expect(zip(healthy, live).allSatisfy { $0 == 1 || $0 == $1 })
    }

    @Test("statsrelay hash --hash MODE prints each vector's backend and key value, names read from standard input",
          arguments: ringModes)
    func hashCommand(_ mode: HashMode) throws {
        let rows = try hashVectorRows("route").filter { $0[1] == mode.rawValue && !$0[3].isEmpty }
        let pools = Dictionary(grouping: rows, by: { $0[2] })
        try #require(pools.count == 9)
        for (backends, rows) in pools {
            let input = FileManager.default.temporaryDirectory.appendingPathComponent("statsrelay-hash-\(getpid())-\(mode).txt")
            try rows.map { $0[3] }.joined(separator: "\n").appending("\n").write(to: input, atomically: true, encoding: .utf8)
            defer { try? FileManager.default.removeItem(at: input) }
            let process = Process()
            process.executableURL = statsrelayExecutable
            process.arguments = ["hash", "--hash", mode.rawValue, "--backends", backends, "-"]
            process.standardInput = try FileHandle(forReadingFrom: input)
            let output = Pipe()
            process.standardOutput = output
            process.standardError = FileHandle.nullDevice
            try process.run()
            let printed = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            process.waitUntilExit()
            if backends.hasSuffix("=100,10.0.0.2:8125=1") {
                // A pool whose second backend has no point on the ring (the vectors keep it to
                // check the rings' arithmetic): the relay refuses it.
                #expect(process.terminationStatus == 64)
                continue
            }
            #expect(process.terminationStatus == 0)
            let lines = printed.split(separator: "\n").map(String.init)
            try #require(lines.count == rows.count)
            let identities = try backends.split(separator: ",").map { try BackendAddress(parsing: String($0)).description }
            for (line, row) in zip(lines, rows) {
                // NAME BACKEND index=N md5=0xVALUE (a name may hold spaces: read from the end).
                #expect(line == "\(row[3]) \(identities[Int(row[5])!]) index=\(row[5]) md5=0x\(row[4])", "\(backends)")
            }
        }
    }

    @Test("a bad --hash, and weights under jump, exit 64 naming what is wrong", arguments: [
        (["hash", "--hash", "crc32", "--backends", "a:1", "foo"], "'crc32' is invalid for '--hash"),
        (["--hash", "maglev", "127.0.0.1:9"], "'maglev' is invalid for '--hash"),
        (["hash", "--backends", "a:1=2,b:2", "foo"], "--hash jump takes no weights"),
        (["--bind", "127.0.0.1", "--port", "0", "127.0.0.1:9=2"], "--hash jump takes no weights"),
        (["--hash", "etsy", "--bind", "127.0.0.1", "--port", "0", "127.0.0.1:9=500", "127.0.0.1:10"], "no point on the etsy ring"),
    ])
    func badHashOptions(_ arguments: [String], _ message: String) throws {
        let result = try RelayProcess.run(arguments)
        #expect(result.status == 64)
        #expect(result.error.contains(message), "stderr: \(result.error)")
    }
}
