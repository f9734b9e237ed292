/// Stops the fuzz run with `message` when an invariant does not hold: libFuzzer reports the
/// trap as a crash and saves the input that caused it.
@inline(__always)
public func require(
    _ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String,
    file: StaticString = #fileID, line: UInt = #line
) {
    if !condition() { fatalError("invariant broken: \(message())", file: file, line: line) }
}

/// The input bytes as text for a failure message: printable ASCII as is, the rest escaped.
public func describe(_ bytes: some Collection<UInt8>, limit: Int = 200) -> String {
    var text = ""
    for byte in bytes.prefix(limit) {
        switch byte {
        case 0x20..<0x7f where byte != UInt8(ascii: "\\"): text.unicodeScalars.append(Unicode.Scalar(byte))
        case UInt8(ascii: "\n"): text += "\\n"
        case UInt8(ascii: "\r"): text += "\\r"
        default: text += "\\x" + (byte < 16 ? "0" : "") + String(byte, radix: 16)
        }
    }
    return bytes.count > limit ? text + "… (\(bytes.count) bytes)" : text
}
