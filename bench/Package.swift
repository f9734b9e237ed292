// swift-tools-version: 6.2

import PackageDescription

/// Settings shared by every Swift target of the benchmark suite.
let strictSettings: [SwiftSetting] = [
    .treatAllWarnings(as: .error),
]

let package = Package(
    name: "statsrelay-bench",
    products: [
        .executable(name: "loadgen", targets: ["loadgen"]),
        .executable(name: "benchsink", targets: ["benchsink"]),
        .executable(name: "kernelbaseline", targets: ["kernelbaseline"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        // Micro-benchmarks (Benchmarks/): ordo-one's harness, with malloc counting, and the
        // relay's own library from the repository root.
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.29.0", traits: ["MallocInterposer"]),
        .package(name: "statsrelay", path: ".."),
    ],
    targets: [
        .target(name: "CBenchShims"),
        // kernelbaseline's bare io_uring receive loop (Debian's liburing-dev, as the relay's).
        .target(name: "CBenchUring", linkerSettings: [.linkedLibrary("uring")]),
        .target(
            name: "BenchKit",
            dependencies: ["CBenchShims"],
            swiftSettings: strictSettings
        ),
        .executableTarget(
            name: "loadgen",
            dependencies: [
                "BenchKit",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strictSettings
        ),
        .executableTarget(
            name: "benchsink",
            dependencies: [
                "BenchKit",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strictSettings
        ),
        .executableTarget(
            name: "kernelbaseline",
            dependencies: [
                "BenchKit",
                "CBenchUring",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strictSettings
        ),
        .executableTarget(
            name: "UringRelayBenchmarks",
            dependencies: [
                "BenchKit",
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "UringRelay", package: "statsrelay"),
            ],
            path: "Benchmarks/UringRelayBenchmarks",
            swiftSettings: strictSettings,
            plugins: [
                .plugin(name: "BenchmarkPlugin", package: "benchmark"),
            ]
        ),
        .testTarget(
            name: "BenchKitTests",
            dependencies: ["BenchKit"],
            swiftSettings: strictSettings
        ),
    ],
    swiftLanguageModes: [.v6]
)
