import Testing
import UringRelay

/// Inputs the fuzz targets of FuzzTesting/ once failed on, replayed through the product's API
/// without libFuzzer. Each input is also kept whole in `FuzzTesting/Crashes/<target>/`, which
/// `scripts/fuzz.sh` replays before fuzzing.
@Suite("Fuzz regressions")
struct FuzzRegressionTests {
    /// The line a configuration file is refused at.
    static func refusedLine(_ yaml: String) -> Int? {
        do {
            _ = try ConfigFile.resolve(file: try ConfigFile.parse(yaml, source: "test.yaml"), flags: ConfigFile(), allowedCPUs: [0, 1])
            return nil
        } catch let error as ConfigFileError {
            return error.line
        } catch {
            return nil
        }
    }

    // FuzzConfigFile, Crashes/FuzzConfigFile/lone-carriage-returns-are-yaml-line-breaks: the
    // target counted lines by LF only and found a refusal "at line 82" of a 31-line text. YAML
    // (1.1 §4.1.4, 1.2 §5.4) breaks lines at CR, LF and CR LF alike, and the refusal names the
    // line the parser counts: the target was wrong, not the product. Pinned here so that the
    // line numbers of a file with old Mac or Windows line ends stay those of the YAML spec.
    @Test("a refused key's line counts a lone CR as a line break and CR LF as one", arguments: [
        ("backends: [127.0.0.1:9001]\nport: eighty", 2),
        ("backends: [127.0.0.1:9001]\rport: eighty", 2),
        ("backends: [127.0.0.1:9001]\r\n\r\nport: eighty", 3),
        ("backends: [127.0.0.1:9001]\r\r\rport: eighty", 4),
    ])
    func carriageReturnLines(_ yaml: String, _ line: Int) {
        #expect(Self.refusedLine(yaml) == line)
    }

    // FuzzBackendAddress, Crashes/FuzzBackendAddress/weight-is-not-in-the-description: the
    // target expected `description` to parse back to the whole address, but the weight (`=2`,
    // added with the etsy and ketama rings) is left out of it on purpose: the description is the
    // backend's identity, and a backend keeps its counters and health when only its weight
    // changes. The target was wrong; pinned here: the description is the identity without the
    // weight, and parses back to it.
    @Test("a weighted backend's description is its identity without the weight, and parses back to it", arguments: [
        ("1*:1:125=2", "1*:1:125", "1*", UInt16(1), "125" as String?, 2),
        ("10.0.0.1:8125:a=65535", "10.0.0.1:8125:a", "10.0.0.1", UInt16(8125), "a", 65_535),
        ("[::1]:8125=3", "[::1]:8125", "::1", UInt16(8125), nil, 3),
    ])
    func weightLeftOutOfDescription(_ written: String, _ identity: String, _ host: String, _ port: UInt16, _ instance: String?, _ weight: Int) throws {
        let address = try BackendAddress(parsing: written)
        #expect(address.host == host && address.port == port && address.instance == instance && address.weight == weight)
        #expect(address.description == identity)
        let again = try BackendAddress(parsing: address.description)
        #expect(again == BackendAddress(host: host, port: port, instance: instance))
    }
}
