// swift-tools-version:6.0
// libFuzzer targets, in a package of their own so `swift test` never builds them. Each target is
// built with -sanitize=fuzzer,address by scripts/fuzz/run, which also holds the seed corpora.
import PackageDescription

let package = Package(
    name: "leasehold-fuzz",
    dependencies: [.package(name: "leasehold", path: "../..")],
    targets: [
        .target(name: "CFuzzer"),
        .target(name: "FuzzDriver", dependencies: ["CFuzzer"]),
        .executableTarget(name: "FuzzFrames", dependencies: ["FuzzDriver", .product(name: "WebSocketCodec", package: "leasehold")]),
        .executableTarget(name: "FuzzHTTP", dependencies: ["FuzzDriver", .product(name: "HTTPCodec", package: "leasehold")]),
        .executableTarget(name: "FuzzAcquire", dependencies: ["FuzzDriver", .product(name: "LeaseProtocol", package: "leasehold")]),
        .executableTarget(name: "FuzzInventory", dependencies: ["FuzzDriver", .product(name: "LeaseholdServer", package: "leasehold")]),
    ],
    swiftLanguageModes: [.v6]
)
