import Glibc

/// Opens a UDP socket bound to `endpoint` with a receive buffer of `receiveBuffer` bytes and a short receive
/// timeout, so that a blocking receive loop notices a stop request within `timeoutMilliseconds`.
///
/// Returns the descriptor and what `UDPSocket.setReceiveBuffer` reported.
public func openListener(
    _ endpoint: LoopbackEndpoint,
    receiveBuffer: Int,
    timeoutMilliseconds: Int = 20
) throws(BenchError) -> (fd: Int32, forced: Bool, effective: Int) {
    let fd = try UDPSocket.open()
    do {
        let buffer = UDPSocket.setReceiveBuffer(fd, bytes: receiveBuffer)
        try UDPSocket.setReceiveTimeout(fd, milliseconds: timeoutMilliseconds)
        try UDPSocket.bind(fd, to: endpoint)
        return (fd, buffer.forced, buffer.effective)
    } catch {
        close(fd)
        throw error
    }
}
