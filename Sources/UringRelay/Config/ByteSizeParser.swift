import RelayKernel

/// Parses byte sizes: `8388608`, `512K`, `8M`, `1G` (binary multiples; `KiB`/`MiB`/`GiB` too).
public enum ByteSizeParser {
    /// The size in bytes.
    ///
    /// - Throws: `ConfigurationError` for `argument` if the text is not a size.
    public static func bytes(_ text: String, argument: String) throws(ConfigurationError) -> Int {
        let suffixes: [(String, Int)] = [
            ("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30), ("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30),
            ("k", 1 << 10), ("m", 1 << 20), ("g", 1 << 30), ("B", 1), ("", 1),
        ]
        for (suffix, scale) in suffixes where text.hasSuffix(suffix) {
            guard let number = Int(text.dropLast(suffix.count)), number >= 0 else { continue }
            let (product, overflow) = number.multipliedReportingOverflow(by: scale)
            if overflow { break }
            return product
        }
        throw ConfigurationError(argument: argument, value: text, reason: "expected a byte size such as 8388608, 512K or 8M")
    }
}
