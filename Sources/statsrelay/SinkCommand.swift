import RelayKernel
import ArgumentParser
import Glibc
import Synchronization
import UringRelay

/// `statsrelay sink --port 9001 --port 9002`: a stand-in StatsD backend that counts what arrives.
struct SinkCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sink",
        abstract: "Listen on UDP ports and count the datagrams and lines each receives (a test backend).",
        discussion: "Stops on SIGINT or SIGTERM and prints the totals per port."
    )

    @Option(name: .customLong("bind"), help: "Address to listen on.")
    var bind = "127.0.0.1"

    @Option(name: .customLong("port"), help: "A UDP port to listen on; repeat for several.")
    var ports: [Int] = []

    @Flag(name: .customLong("print"), help: "Print every line received (cut to 200 bytes).")
    var printLines = false

    @Option(name: .customLong("report-every"), help: "Print running totals this often when they change (0 = only at exit).")
    var reportEvery = "1s"

    func validate() throws {
        if ports.isEmpty { throw ValidationError("give at least one --port") }
        for port in ports where !(1...65_535).contains(port) {
            throw ValidationError("invalid --port '\(port)': must be 1-65535")
        }
        if SocketAddress(numericHost: bind, port: 0) == nil {
            throw ValidationError("invalid --bind '\(bind)': not an IPv4 or IPv6 address")
        }
        do { _ = try DurationParser.nanoseconds(reportEvery, argument: "--report-every") } catch {
            throw ValidationError(error.description)
        }
    }

    func run() throws {
        let signals = SignalWaiter()
        let totals = SinkTotals(ports: ports)
        let stop = try WakeupEvent()
        let interval = try DurationParser.nanoseconds(reportEvery, argument: "--report-every")
        var threads: [WorkerThreadHandle] = []
        defer { for thread in threads { thread.join() } }
        for (index, port) in ports.enumerated() {
            let socket: UDPSocket
            do {
                socket = try UDPSocket.bound(to: SocketAddress(numericHost: bind, port: UInt16(port))!, receiveBufferBytes: 32 << 20)
            } catch {
                printError("\(error)")
                stop.signal()
                throw ExitCode(71)
            }
            let owned = SocketBox(socket)
            let printLines = self.printLines
            threads.append(WorkerThreadHandle(try WorkerThread(name: "sink-\(port)", cpu: nil) { _ in
                while !stop.isSignalled {
                    guard let datagram = try? owned.socket.receive(timeoutMilliseconds: 100) else { continue }
                    var lines = 0
                    for line in datagram.bytes.split(separator: UInt8(ascii: "\n")) where !line.isEmpty {
                        lines += 1
                        if printLines {
                            print(":\(port) \(String(decoding: line.prefix(200), as: UTF8.self))")
                        }
                    }
                    totals.add(port: index, datagrams: 1, lines: lines)
                }
            }))
        }
        if interval > 0 {
            threads.append(WorkerThreadHandle(try WorkerThread(name: "sink-report", cpu: nil) { _ in
                var last = ""
                while !stop.isSignalled {
                    var pause = timespec(tv_sec: Int(interval / 1_000_000_000), tv_nsec: Int(interval % 1_000_000_000))
                    nanosleep(&pause, nil)
                    let now = totals.summary()
                    if now != last { printError(now) }
                    last = now
                }
            }))
        }
        _ = signals.wait()
        stop.signal()
        for thread in threads { thread.join() }
        threads = []
        printError("final: " + totals.summary())
    }
}

/// Per-port counts shared by the sink's receive threads.
final class SinkTotals: Sendable {
    private let ports: [Int]
    private let counts: Mutex<[(datagrams: Int, lines: Int)]>

    init(ports: [Int]) {
        self.ports = ports
        counts = Mutex(Array(repeating: (0, 0), count: ports.count))
    }

    func add(port index: Int, datagrams: Int, lines: Int) {
        counts.withLock {
            $0[index].datagrams += datagrams
            $0[index].lines += lines
        }
    }

    /// `:9001 datagrams=3 lines=40  :9002 …`.
    func summary() -> String {
        counts.withLock { counts in
            zip(ports, counts).map { ":\($0) datagrams=\($1.datagrams) lines=\($1.lines)" }.joined(separator: "  ")
        }
    }
}
