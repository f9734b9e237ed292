@testable import RelayKernel
import Foundation
import Glibc
import Testing
@testable import UringRelay

/// A configuration file in a directory of its own, removed at the end of the test.
final class TemporaryConfigFile: @unchecked Sendable {  // used from one test at a time
    let directory: URL
    let path: String

    init(_ text: String = "") throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("statsrelay-config-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        path = directory.appendingPathComponent("statsrelay.yaml").path
        try write(text)
    }

    deinit { try? FileManager.default.removeItem(at: directory) }

    /// Replaces the file's text, whole: written beside it, then renamed over it, as an editor or
    /// a configuration manager does, so a reload never reads half a file.
    func write(_ text: String) throws {
        let next = directory.appendingPathComponent("next.yaml")
        try text.write(to: next, atomically: false, encoding: .utf8)
        guard rename(next.path, path) == 0 else { throw Errno.current }
    }
}

/// `statsrelay check-config FILE` and `statsrelay --config FILE`, through the executable.
@Suite("statsrelay check-config and --config", .timeLimit(.minutes(1)), .onOwnThread)
struct ConfigFileCommandTests {
    @Test("check-config: a valid file exits 0 and prints every key; the printed configuration checks again to the same text")
    func validFile() throws {
        let file = try TemporaryConfigFile("""
            port: 9125
            packet-len: 512
            on-backend-down: hold
            backends:
              - 127.0.0.1:9001:a
              - address: 127.0.0.1:9002
                label: b
                health-check-port: 8136
            """)
        let result = try RelayProcess.run(["check-config", file.path])
        #expect(result.status == 0, "stderr: \(result.error)")
        #expect(result.error.isEmpty, "stderr: \(result.error)")
        let output = result.output
        for key in ConfigFile.keys where key.name != "bind" && key.name != "port" {
            #expect(output.contains("\n\(key.name):"), "\(key.name) is missing:\n\(output)")
        }
        #expect(output.contains("\nlisteners:  # reload: applied at SIGHUP\n- 0.0.0.0:9125\n"), "\(output)")
        #expect(output.contains("\npacket-len: 512  # reload: applied at SIGHUP\n"), "\(output)")
        #expect(output.contains("\non-backend-down: hold  # reload: applied at SIGHUP\n"), "\(output)")
        #expect(output.contains("\nflush-interval: 10ms  # reload: applied at SIGHUP\n"), "\(output)")  // a default
        #expect(output.contains("""

            backends:  # reload: applied at SIGHUP
            - 127.0.0.1:9001:a
            - address: 127.0.0.1:9002
              label: b
              health-check-port: 8136

            """), "\(output)")

        let printed = try TemporaryConfigFile(output)
        let again = try RelayProcess.run(["check-config", printed.path])
        #expect(again.status == 0, "stderr: \(again.error)")
        let body = { (text: String) in text.split(separator: "\n").filter { !$0.hasPrefix("#") } }
        #expect(body(again.output) == body(output))
    }

    @Test("check-config: an invalid file exits 64 with the file, line, key path, value and reason", arguments: [
        ("backends: [127.0.0.1:9001]\npacket-lenght: 1400\n",
         ":2: packet-lenght: unknown key (did you mean 'packet-len'?); the keys are the long options' names: see docs/configuration.md"),
        ("backends: [127.0.0.1:9001]\nport: http\n", ":2: port: invalid value 'http': expected an integer"),
        ("backends: [127.0.0.1:9001]\nhold-bytes: 4G\n", ":2: hold-bytes: invalid value '4G': must be from 0 to 2G bytes"),
        // Spelt differently, one address: refused once resolved, as at start-up.
        ("backends:\n  - localhost:9001\n  - 127.0.0.1:9001:b\n",
         ":3: backends[1]: invalid value '127.0.0.1:9001:b': same address as backend 1 ('localhost:9001'): both are 127.0.0.1:9001; give each backend once"),
        ("port: 9125\nbackends:\n  - 127.0.0.1:9001\n  - 127.1.2.3:9125\n",
         ":4: backends[1]: invalid value '127.1.2.3:9125': reaches this relay's own listener 0.0.0.0:9125: every line sent to it would come back to the relay and be relayed again, forever; give the address of a statsd, not of this relay"),
        // The mirror is checked as `run` checks it.
        ("port: 9125\nbackends: [127.0.0.1:9001]\nmirror: [127.0.0.1:9125]\n",
         ":3: mirror: invalid value '127.0.0.1:9125': reaches this relay's own listener 0.0.0.0:9125: every line sent to it would come back to the relay and be relayed again, forever; give the address of a statsd, not of this relay"),
    ])
    func invalidFile(_ yaml: String, _ message: String) throws {
        let file = try TemporaryConfigFile(yaml)
        let result = try RelayProcess.run(["check-config", file.path])
        #expect(result.status == 64)
        #expect(result.output.isEmpty)
        #expect(result.error == file.path + message + "\n", "stderr: \(result.error)")
    }

    @Test("check-config: a file that cannot be read exits 64 naming the failed call")
    func missingFile() throws {
        let result = try RelayProcess.run(["check-config", "/nonexistent/statsrelay.yaml"])
        #expect(result.status == 64)
        #expect(result.error == "/nonexistent/statsrelay.yaml: cannot be read: open /nonexistent/statsrelay.yaml: No such file or directory (errno 2)\n")
    }

    @Test("check-config: a FIFO, a directory or a device at the path exits 64 at once saying it is not a regular file", arguments: ["fifo", "directory", "device"])
    func notARegularFile(kind: String) throws {
        let file = try TemporaryConfigFile()
        #expect(unlink(file.path) == 0)
        switch kind {
        case "fifo": #expect(mkfifo(file.path, 0o600) == 0)
        case "directory": #expect(mkdir(file.path, 0o700) == 0)
        default: #expect(symlink("/dev/zero", file.path) == 0)
        }
        // Without a writer, opening the FIFO blocked until the run's time limit.
        let result = try RelayProcess.run(["check-config", file.path])
        #expect(result.status == 64)
        let named = ["fifo": "a FIFO", "directory": "a directory", "device": "a character device"][kind]!
        #expect(result.error == "\(file.path): cannot be read: open \(file.path): Invalid argument (errno 22); not a regular file (\(named))\n")
        if kind == "directory" { rmdir(file.path) } else { unlink(file.path) }
    }

    /// What some Windows editors write first: libyaml counted it as a column, and the second
    /// key seemed indented.
    @Test("check-config: a file starting with a UTF-8 byte order mark reads as without it")
    func byteOrderMark() throws {
        let backend = "127.0.0.1:39999"
        let file = try TemporaryConfigFile()
        let text = "port: 8125\nthreads: 1\nbackends: [\(backend)]\n"
        try Data([0xEF, 0xBB, 0xBF] + Array(text.utf8)).write(to: URL(fileURLWithPath: file.path))
        let marked = try RelayProcess.run(["check-config", file.path])
        #expect(marked.status == 0, "\(marked.error)")
        try file.write(text)
        let plain = try RelayProcess.run(["check-config", file.path])
        #expect(marked.output == plain.output)
    }

    @Test("check-config: a backend name that does not resolve exits 75, as at start-up")
    func unresolvedName() throws {
        let file = try TemporaryConfigFile("backends: [statsd.invalid:9001]\n")
        let result = try RelayProcess.run(["check-config", "--resolve-timeout", "5s", file.path])
        #expect(result.status == 75)
        #expect(result.error.hasPrefix("resolve backend statsd.invalid:9001: "), "stderr: \(result.error)")
    }

    @Test("run --config: a flag given overrides the file's key, a flag not given leaves it; a bad file exits 64 naming its key", arguments: ioDrivers)
    func flagsOverFile(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let file = try TemporaryConfigFile("""
            listeners: ["127.0.0.1:0"]
            threads: 1
            packet-len: 200
            flush-interval: 20ms
            max-datagram: 4096
            backends: [\(backend.spec)]
            """)
        let relay = try RelayProcess(driver: driver, ["--config", file.path, "--packet-len", "512", "-bufsize", "1M"])
        let address = try relay.listenAddress()
        let start = try #require(relay.logLine(containing: "listening on "))
        #expect(relay.standardError.contains("io_backend=\(driver.rawValue)"), "\(relay.standardError)")
        #expect(start.contains("packet_len=512"), "\(start)")  // the flag
        #expect(start.contains("rcvbuf_requested=1048576"), "\(start)")  // a Go spelling of a flag
        #expect(start.contains("flush_interval=20ms"), "\(start)")  // the file
        #expect(start.contains("max_datagram=4096"), "\(start)")  // the file
        #expect(start.contains("threads=1"), "\(start)")  // the file
        try send(["a:1|c"], to: address)
        relay.signal(SIGTERM)
        #expect(relay.waitForExit() == 0)
        #expect(try collect(from: [backend], expectedLines: 1).lines[0] == ["a:1|c"])

        try file.write("backends: [\(backend.spec)]\nflush-interval: 2m\n")
        let bad = try RelayProcess.run(["--io-backend", driver.rawValue, "--config", file.path])
        #expect(bad.status == 64)
        #expect(bad.error.contains("\(file.path):2: flush-interval: invalid value '2m': must be between 100us and 60s"), "\(bad.error)")
        // A bad flag over the same file is named as the flag.
        let check = try RelayProcess.run(["--io-backend", driver.rawValue, "--config", file.path, "--flush-interval", "3m"])
        #expect(check.status == 64)
        #expect(check.error.contains("invalid --flush-interval '3m': must be between 100us and 60s"), "\(check.error)")
    }
}
