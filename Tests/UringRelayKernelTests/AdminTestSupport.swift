@testable import RelayKernel
import Foundation
import Glibc
import Testing
@testable import UringRelay

/// A relay's arguments with its admin endpoint turned off (`--admin none`), unless they name
/// one or run another subcommand: the default admin port (8127) is one per host, so relays that
/// tests start side by side (and other test runs on the machine) would take it from each other.
func adminOff(_ arguments: [String]) -> [String] {
    let subcommands: Set<String> = ["check-config", "hash", "sink", "status", "help", "--version", "--help", "-h"]
    if let first = arguments.first, subcommands.contains(first) { return arguments }
    if arguments.contains("--admin") { return arguments }
    return ["--admin", "none"] + arguments
}

/// `promtool` from `PATH` (Debian package `prometheus`), or `nil`.
var promtool: URL? {
    let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
    for directory in path.split(separator: ":") {
        let candidate = URL(fileURLWithPath: String(directory)).appendingPathComponent("promtool")
        if FileManager.default.isExecutableFile(atPath: candidate.path) { return candidate }
    }
    return nil
}

/// Runs `promtool check metrics` on `exposition`: its exit status and what it printed.
///
/// - Throws: a skip (test cancelled, with the reason) where promtool is not installed.
func promtoolCheck(_ exposition: String) throws -> (status: Int32, output: String) {
    guard let promtool else {
        try Test.cancel("promtool is not installed (Debian package prometheus): the exposition was not checked by it")
    }
    let process = Process()
    process.executableURL = promtool
    process.arguments = ["check", "metrics"]
    let input = Pipe()
    let output = Pipe()
    process.standardInput = input
    process.standardOutput = output
    process.standardError = output
    try process.run()
    input.fileHandleForWriting.write(Data(exposition.utf8))
    try input.fileHandleForWriting.close()
    let printed = output.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: printed, as: UTF8.self))
}

/// The samples of `/metrics` at `address`, and the raw text.
func scrape(_ address: AdminAddress) throws -> (samples: [PrometheusSample], text: String) {
    let response = try AdminClient.get("/metrics", from: address)
    #expect(response.status == 200, "GET /metrics: \(response.status) \(response.body)")
    return (PrometheusSample.parse(response.body), response.body)
}

/// The value of the one sample named `name` with `labels` (among others), or `nil`.
func value(_ samples: [PrometheusSample], _ name: String, _ labels: [String: String] = [:]) -> Double? {
    let matching = samples.filter { sample in sample.name == name && labels.allSatisfy { sample.labels[$0.key] == $0.value } }
    return matching.count == 1 ? matching[0].value : nil
}

/// Scrapes `/metrics` until `condition` holds on its samples or `seconds` pass (counters are
/// published by the workers every 100 ms, and lines count as sent 200 ms after their send);
/// returns the last scrape.
func scrape(_ address: AdminAddress, until condition: ([PrometheusSample]) -> Bool, seconds: Double = 10) throws -> (samples: [PrometheusSample], text: String) {
    let deadline = Date().addingTimeInterval(seconds)
    var last = try scrape(address)
    while !condition(last.samples), Date() < deadline {
        usleep(50_000)
        last = try scrape(address)
    }
    return last
}

/// The admin address from a child relay's `admin endpoint on http://ADDR:PORT` start-up line.
func adminAddress(of relay: RelayProcess) throws -> AdminAddress {
    #expect(relay.waitForLog("admin endpoint on http://"), "no admin endpoint line: \(relay.standardError)")
    let line = try #require(relay.logLine(containing: "admin endpoint on http://"))
    let spec = try #require(line.split(separator: "http://").last?.split(separator: " ").first)
    return try #require(try AdminAddress.parse(String(spec)))
}

/// Whether process `pid` holds a listening TCP socket (IPv4 or IPv6): the inodes of its socket
/// descriptors looked up among `/proc/net/tcp{,6}`'s entries in state `0A` (LISTEN).
func holdsListeningTCPSocket(pid: Int32) throws -> Bool {
    let descriptors = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")
    var inodes: Set<String> = []
    for descriptor in descriptors {
        if let target = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/fd/\(descriptor)"),
           target.hasPrefix("socket:[") {
            inodes.insert(String(target.dropFirst("socket:[".count).dropLast()))
        }
    }
    for table in ["/proc/\(pid)/net/tcp", "/proc/\(pid)/net/tcp6"] {
        guard let text = try? String(contentsOfFile: table, encoding: .utf8) else { continue }
        for line in text.split(separator: "\n").dropFirst() {
            let fields = line.split(separator: " ")
            // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
            if fields.count > 9, fields[3] == "0A", inodes.contains(String(fields[9])) { return true }
        }
    }
    return false
}

/// A new TCP connection to `address`, its descriptor (the caller closes it); nothing is sent.
func openConnection(to address: AdminAddress) throws -> Int32 {
    let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    try #require(descriptor >= 0)
    var target = try #require(SocketAddress(numericHost: address.host, port: address.port))
    let connected = withUnsafePointer(to: &target.storage) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(descriptor, $0, target.length) }
    }
    guard connected == 0 else {
        let code = errno
        close(descriptor)
        throw SystemCallError("connect", "tcp \(address)", Errno(rawValue: code))
    }
    return descriptor
}

/// Sends `request` as is on a new TCP connection to `address` and returns everything the
/// server wrote before it closed the connection (at most 5 s).
func rawHTTPExchange(_ request: [UInt8], with address: AdminAddress) throws -> String {
    let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    try #require(descriptor >= 0)
    defer { close(descriptor) }
    var timeout = timeval(tv_sec: 5, tv_usec: 0)
    setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    var target = try #require(SocketAddress(numericHost: address.host, port: address.port))
    let connected = withUnsafePointer(to: &target.storage) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(descriptor, $0, target.length) }
    }
    try #require(connected == 0, "connect: errno \(errno)")
    var offset = 0
    while offset < request.count {
        let written = request[offset...].withUnsafeBytes { send(descriptor, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        if written < 0 && errno == EINTR { continue }
        if written <= 0 { break }  // the server closed the connection: what it answered is read below
        offset += written
    }
    var reply: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 4096)
    let started = Date()
    while true {
        let count = buffer.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress, $0.count, 0) }
        if count < 0 {
            let code = errno
            // A signal meant for another test's relay thread in this process can interrupt it.
            if code == EINTR && Date().timeIntervalSince(started) < 5 { continue }
            return String(decoding: reply, as: UTF8.self) + "<recv errno \(code) after \(Date().timeIntervalSince(started))s, sent \(offset)>"
        }
        if count == 0 { break }
        reply += buffer[..<count]
    }
    return String(decoding: reply, as: UTF8.self)
}

/// A TCP server on loopback that is not a relay, for `statsrelay status` and `AdminClient`
/// against it: it answers each connection's request with the same bytes, or, with no answer,
/// never accepts (the kernel completes the connection; nothing ever comes back).
final class FakeAnswerServer: @unchecked Sendable {
    let address: AdminAddress
    private let descriptor: Int32
    private let finished = DispatchSemaphore(value: 0)
    private let answers: Bool

    init(answer: [UInt8]?) throws {
        let port = try unusedTCPPort()
        let listening = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        try #require(listening >= 0)
        var local = try #require(SocketAddress(numericHost: "127.0.0.1", port: port))
        let bound = withUnsafePointer(to: &local.storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listening, $0, local.length) }
        }
        try #require(bound == 0 && listen(listening, 16) == 0, "bind/listen 127.0.0.1:\(port): errno \(errno)")
        descriptor = listening
        address = AdminAddress(host: "127.0.0.1", port: port)
        answers = answer != nil
        guard let answer else { return }
        let finished = finished
        Thread.detachNewThread {
            defer { finished.signal() }
            while true {
                let connection = accept(listening, nil, nil)
                if connection < 0 {
                    if errno == EINTR { continue }
                    return  // `stop()` shut the listening socket down
                }
                var timeout = timeval(tv_sec: 5, tv_usec: 0)
                setsockopt(connection, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
                var request = [UInt8](repeating: 0, count: 4096)
                _ = request.withUnsafeMutableBytes { recv(connection, $0.baseAddress, $0.count, 0) }
                _ = answer.withUnsafeBytes { send(connection, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                // Until the client closes (or 5 s): it must judge the answer, not our close.
                for _ in 0..<1_000 {
                    let count = request.withUnsafeMutableBytes { recv(connection, $0.baseAddress, $0.count, 0) }
                    if count == 0 || (count < 0 && errno != EINTR) { break }
                }
                close(connection)
            }
        }
    }

    /// Stops accepting and closes the listening socket.
    func stop() {
        shutdown(descriptor, Int32(SHUT_RDWR))
        if answers { finished.wait() }
        close(descriptor)
    }
}
