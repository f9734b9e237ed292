@testable import RelayKernel
import Foundation
import Testing
@testable import UringRelay

@Suite("Every byte of a line passes unchanged", .serialized, .timeLimit(.minutes(1)), .onOwnThread)
struct ByteTransparencyTests {
    @Test("a line holding every byte value but NUL and \\n (\\r inside it too) reaches its backend byte for byte", arguments: ioDrivers)
    func everyByteValue(driver: IOBackendChoice) throws {
        try requireDriver(driver)
        let backend = try TestBackend()
        let relay = try InProcessRelay(backends: [backend], driver: driver)
        // Most of these bytes are not UTF-8: compared as bytes, never through a String.
        let line = Array("every.byte:".utf8) + (1...255).map(UInt8.init).filter { $0 != UInt8(ascii: "\n") }
        let second = Array("after:1|c".utf8)
        let sender = try UDPSocket.bound(to: SocketAddress(numericHost: "127.0.0.1", port: 0)!)
        try sender.send(line + [UInt8(ascii: "\n")] + second, to: relay.address)
        var received: [UInt8] = []
        let deadline = Date().addingTimeInterval(5)
        while received.count < line.count + second.count + 2, Date() < deadline {
            if let datagram = try backend.socket.receive(timeoutMilliseconds: 100) { received += datagram.bytes }
        }
        let counters = relay.stop()
        #expect(received == line + [UInt8(ascii: "\n")] + second + [UInt8(ascii: "\n")])
        #expect(counters[.linesForwarded] == 2)
    }
}
