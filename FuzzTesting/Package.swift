// swift-tools-version: 6.2
import PackageDescription

// libFuzzer targets for statsrelay, in a package of their own: `-sanitize=fuzzer` links
// libFuzzer's `main`, which would clash with the test runner's in the main package (the layout
// of apple/swift-protobuf's FuzzTesting/). Build and run with ../scripts/fuzz.sh; by hand:
//   swift build -c release --sanitize=fuzzer -Xswiftc -sanitize=fuzzer,address
//   .build/release/FuzzLineScanner -dict=Dictionaries/statsd.dict /tmp/work Corpus/Datagrams
//
// Each target is an executable without a main.swift: its code is parsed as a library and only
// defines `LLVMFuzzerTestOneInput`, so it links only where libFuzzer supplies `main`.

/// Warnings are errors here too, as in the relay's own targets.
let strict: [SwiftSetting] = [.treatAllWarnings(as: .error)]
let relay: Target.Dependency = .product(name: "UringRelay", package: "statsrelay")

let package = Package(
    name: "FuzzTesting",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "statsrelay", path: ".."),
    ],
    targets: [
        .target(name: "FuzzSupport", dependencies: [relay], swiftSettings: strict),
        .executableTarget(name: "FuzzLineScanner", dependencies: ["FuzzSupport", relay], swiftSettings: strict),
        .executableTarget(name: "FuzzDatagramProcessor", dependencies: ["FuzzSupport", relay], swiftSettings: strict),
        .executableTarget(name: "FuzzDogStatsD", dependencies: ["FuzzSupport", relay], swiftSettings: strict),
        .executableTarget(name: "FuzzBackendAddress", dependencies: ["FuzzSupport", relay], swiftSettings: strict),
        .executableTarget(name: "FuzzConfigValues", dependencies: ["FuzzSupport", relay], swiftSettings: strict),
        .executableTarget(name: "FuzzConfigFile", dependencies: ["FuzzSupport", relay], swiftSettings: strict),
        .executableTarget(name: "FuzzStreamLineFramer", dependencies: ["FuzzSupport", relay], swiftSettings: strict),
        .executableTarget(name: "FuzzTCPIngest", dependencies: ["FuzzSupport", relay], swiftSettings: strict),
    ],
    swiftLanguageModes: [.v6]
)
