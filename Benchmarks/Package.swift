// swift-tools-version:6.0
// Benchmarks live in their own package so `swift test` at the top never builds them.
// Run: cd Benchmarks && swift run -c release <CodecBench|CoreBench|LoadBench> --help
import PackageDescription

let package = Package(
    name: "leasehold-benchmarks",
    dependencies: [
        .package(name: "leasehold", path: ".."),
    ],
    targets: [
        .executableTarget(
            name: "CodecBench",
            dependencies: [.product(name: "WebSocketCodec", package: "leasehold")],
            swiftSettings: [.swiftLanguageMode(.v6)]
        ),
        .executableTarget(
            name: "CoreBench",
            dependencies: [.product(name: "LeaseCore", package: "leasehold")],
            swiftSettings: [.swiftLanguageMode(.v6)]
        ),
        .target(name: "CEpoll"),
        // The no-op epoll server that leasehold's transport is measured against.
        .executableTarget(name: "NoopServer", linkerSettings: [.linkedLibrary("crypto")]),
        .executableTarget(
            name: "LoadBench",
            dependencies: [
                "CEpoll",
                .product(name: "Transport", package: "leasehold"),
                .product(name: "LeaseProtocol", package: "leasehold"),
                .product(name: "WebSocketCodec", package: "leasehold"),
            ]
        ),
    ],
    // LoadBench is a top-level script with shared state: Swift 5 mode keeps it simple.
    swiftLanguageModes: [.v5]
)
