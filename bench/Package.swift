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
    ],
    targets: [
        .target(name: "CBenchShims"),
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
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "BenchKitTests",
            dependencies: ["BenchKit"],
            swiftSettings: strictSettings
        ),
    ],
    swiftLanguageModes: [.v6]
)
