import FuzzSupport
import UringRelay

// Fuzzes `BackendAddress(parsing:)` with the input as the text of one command-line backend
// (argv is bytes: invalid UTF-8 is repaired as Swift repairs argv; it never holds a NUL, so
// inputs with one are skipped). Checked:
// - it never traps, whatever the text;
// - an accepted address has an ASCII host (no space or '/'), a port from 1 to 65 535, no
//   empty instance and none holding the byte '=' (it would be the weight's), a weight within
//   1...maximumWeight when given;
// - its `description` (the address as logged and used as the backend's identity, which leaves
//   out by design the weight, so that a backend keeps its counters when only its weight
//   changes, and the scheme, which chooses the transport only) parses back to the same
//   address without its weight and transport;
// - its `written` form (what a configuration file is printed with) parses back to it whole;
// - a refused one is a `ConfigurationError` for `backend` carrying the text as written and a
//   reason.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzBackendAddress(_ data: UnsafeRawPointer?, _ size: Int) -> CInt {
    let input = UnsafeRawBufferPointer(start: data, count: size)
    guard !input.contains(0) else { return -1 }
    let text = String(decoding: input, as: UTF8.self)
    do {
        let address = try BackendAddress(parsing: text)
        require(!address.host.isEmpty, "accepted an empty host from \"\(text)\"")
        require(!address.host.contains(where: { $0 == " " || $0 == "/" }),
                "accepted host \"\(address.host)\" from \"\(text)\"")
        require(address.host.utf8.allSatisfy { $0 < 0x80 }, "accepted a host past ASCII from \"\(text)\"")
        require(address.port > 0, "accepted port 0 from \"\(text)\"")
        require(!(address.instance?.utf8.contains(UInt8(ascii: "=")) ?? false), "accepted an instance holding '=' from \"\(text)\"")
        require(address.instance.map { !$0.isEmpty } ?? true, "accepted an empty instance from \"\(text)\"")
        require(address.weight.map { (1...BackendAddress.maximumWeight).contains($0) } ?? true,
                "accepted weight \(String(describing: address.weight)) from \"\(text)\"")
        var identity = address
        identity.weight = nil
        identity.transport = nil
        let again = try? BackendAddress(parsing: address.description)
        require(again == identity, "\"\(text)\" -> \(address) -> \"\(address.description)\" -> \(String(describing: again))")
        let whole = try? BackendAddress(parsing: address.written)
        require(whole == address, "\"\(text)\" -> \(address) -> written \"\(address.written)\" -> \(String(describing: whole))")
    } catch {
        require(error.argument == "backend" && error.value == text && !error.reason.isEmpty, "error \(error) for \"\(text)\"")
    }
    return 0
}
