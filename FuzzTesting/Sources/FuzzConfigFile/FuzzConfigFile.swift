import FuzzSupport
import UringRelay

// Fuzzes the configuration file decoder (`--config`, `check-config`, SIGHUP): YAML text through
// `ConfigFile.parse` (Yams, then the key-by-key shape check, then `Codable`), then
// `ConfigFile.resolve` (the values checked against their limits, as at start and at a reload).
// Checked:
// - nothing traps, whatever the text: any refusal is a `ConfigFileError` or `ConfigurationError`;
// - a refusal of the file names the file (the `source` given) and says why, at a line of the file
//   when it gives one;
// - a configuration that resolves survives `ConfigFile.render` (what `check-config` prints) and
//   reading back: the rendered text parses, resolves, and gives the same configuration.
// Input that is not UTF-8 is refused by `ConfigFile.load` before `parse`, so it is skipped here.

/// The name the fuzzer's text goes by, which every refusal of the file must carry.
let source = "fuzz.yaml"
/// The CPUs `resolve` may give workers (the default `threads` is their count).
let allowedCPUs = [0, 1]

/// The number of lines of `text` as YAML counts them (libyaml's marks): a line ends at LF, CR,
/// CR LF (one break), NEL, LS or PS. Counting LF only was wrong: a file of lone CRs (old Mac
/// line ends) is one line to `wc -l` but many to the parser, which reports its own line numbers.
func yamlLineCount(_ text: String) -> Int {
    var lines = 1
    var afterCR = false
    for scalar in text.unicodeScalars {
        switch scalar {
        case "\n": if !afterCR { lines += 1 }
        case "\r", "\u{85}", "\u{2028}", "\u{2029}": lines += 1
        default: break
        }
        afterCR = scalar == "\r"
    }
    return lines
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzConfigFile(_ data: UnsafeRawPointer?, _ size: Int) -> CInt {
    let input = UnsafeRawBufferPointer(start: data, count: size)
    guard let text = String(validating: input, as: UTF8.self) else { return 0 }
    let lineCount = yamlLineCount(text)
    let file: ConfigFile
    do {
        file = try ConfigFile.parse(text, source: source)
    } catch {
        require(error.source == source && !error.reason.isEmpty, "parse refusal \(error) for \"\(describe(input.prefix(400)))\"")
        if let line = error.line {
            require((1...lineCount + 1).contains(line), "parse refusal at line \(line) of \(lineCount): \(error)")
        }
        return 0
    }
    let configuration: RelayConfiguration
    do {
        configuration = try ConfigFile.resolve(file: file, flags: ConfigFile(), allowedCPUs: allowedCPUs)
    } catch let error as ConfigFileError {
        require(error.source == source && !error.reason.isEmpty, "resolve refusal \(error) for \"\(describe(input.prefix(400)))\"")
        return 0
    } catch let error as ConfigurationError {
        require(!error.reason.isEmpty, "resolve refusal \(error) without a reason")
        return 0
    } catch {
        require(false, "resolve threw \(type(of: error)) \(error) for \"\(describe(input.prefix(400)))\"")
        return 0
    }
    let rendered = ConfigFile.render(configuration)
    do {
        let again = try ConfigFile.parse(rendered, source: "rendered.yaml")
        let resolvedAgain = try ConfigFile.resolve(file: again, flags: ConfigFile(), allowedCPUs: allowedCPUs)
        require(resolvedAgain == configuration,
                "render round trip changed the configuration of \"\(describe(input.prefix(400)))\":\n\(rendered)")
    } catch {
        require(false, "rendered configuration refused (\(error)) for \"\(describe(input.prefix(400)))\":\n\(rendered)")
    }
    return 0
}
