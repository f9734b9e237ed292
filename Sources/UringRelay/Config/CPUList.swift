import RelayKernel

/// Parses CPU lists in the kernel's `cpuset` syntax: `0-3,8`, `1`, `0,2-4`.
public enum CPUList {
    /// The CPUs, sorted, without duplicates.
    ///
    /// - Throws: `ConfigurationError` for argument `--cpus` naming the bad part.
    public static func parse(_ text: String) throws(ConfigurationError) -> [Int] {
        func invalid(_ reason: String) -> ConfigurationError {
            ConfigurationError(argument: "--cpus", value: text, reason: reason)
        }
        var cpus = Set<Int>()
        for part in text.split(separator: ",", omittingEmptySubsequences: false) {
            let bounds = part.split(separator: "-", omittingEmptySubsequences: false)
            guard (1...2).contains(bounds.count), let low = Int(bounds[0]), low >= 0,
                  let high = Int(bounds[bounds.count - 1]), high >= low, high < 1024 else {
                throw invalid("'\(part)' is not a CPU number or range such as 0-3")
            }
            cpus.formUnion(low...high)
        }
        return cpus.sorted()
    }
}
