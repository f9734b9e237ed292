// swift-tools-version: 6.2
import PackageDescription

/// Warnings are errors in our own targets only; dependencies keep their own settings.
let strict: [SwiftSetting] = [.treatAllWarnings(as: .error)]

/// The per-line path crosses from UringRelay into RelayKernel (send-buffer appends, buffer
/// views): release builds optimise across the module boundary so those calls inline and
/// specialise as they did when both were one module.
let crossModule: [SwiftSetting] = [.unsafeFlags(["-cross-module-optimization"], .when(configuration: .release))]

let package = Package(
    name: "statsrelay",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "statsrelay", targets: ["statsrelay"]),
        .library(name: "UringRelay", targets: ["UringRelay"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        // RigidArray: fixed-capacity arrays without copy-on-write checks for the per-line state.
        .package(url: "https://github.com/apple/swift-collections", from: "1.6.0"),
        // The admin endpoint (/metrics, /healthz) and `statsrelay status`: HTTP/1.1 on one event
        // loop thread of its own, never on a worker.
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.0"),
        // The configuration file (`--config`): YAML decoded with Codable, its nodes' marks giving
        // each error its line. See docs/configuration.md for why Yams.
        .package(url: "https://github.com/jpsim/Yams", from: "5.0.0"),
    ],
    targets: [
        .systemLibrary(
            name: "CLiburing",
            pkgConfig: "liburing",
            providers: [.apt(["liburing-dev"])]
        ),
        // The only target that touches liburing and raw kernel memory: the compiler keeps the
        // unsafe boundary, not a convention.
        .target(
            name: "RelayKernel",
            dependencies: [
                "CLiburing",
                .product(name: "BasicContainers", package: "swift-collections"),
            ],
            swiftSettings: strict + crossModule
        ),
        .target(
            name: "UringRelay",
            dependencies: [
                "RelayKernel",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "BasicContainers", package: "swift-collections"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Yams", package: "Yams"),
            ],
            swiftSettings: strict
        ),
        .executableTarget(
            name: "statsrelay",
            dependencies: [
                "UringRelay",
                "RelayKernel",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        // The routing written again from its definition, for both test targets' expectations.
        .target(
            name: "RoutingReference",
            path: "Tests/RoutingReference",
            swiftSettings: strict
        ),
        .testTarget(
            name: "UringRelayTests",
            dependencies: ["UringRelay", "RelayKernel", "RoutingReference"],
            swiftSettings: strict
        ),
        .testTarget(
            name: "UringRelayKernelTests",
            dependencies: ["UringRelay", "RelayKernel", "statsrelay", "RoutingReference"],
            swiftSettings: strict
        ),
    ]
)
