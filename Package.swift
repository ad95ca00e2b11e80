// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "leasehold",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "leasehold", targets: ["leasehold"]),
        .executable(name: "leasehold-echo", targets: ["leasehold-echo"]),
        .library(name: "LeaseholdClient", targets: ["LeaseholdClient"]),
        // For the Benchmarks package.
        .library(name: "WebSocketCodec", targets: ["WebSocketCodec"]),
        .library(name: "LeaseCore", targets: ["LeaseCore"]),
        .library(name: "Transport", targets: ["Transport"]),
        .library(name: "LeaseProtocol", targets: ["LeaseProtocol"]),
        .library(name: "HTTPCodec", targets: ["HTTPCodec"]),
        .library(name: "PerMessageDeflate", targets: ["PerMessageDeflate"]),
        // For the fuzz package (scripts/fuzz): the inventory loader.
        .library(name: "LeaseholdServer", targets: ["LeaseholdServer"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
    ],
    targets: [
        // Protocol layers: pure, no sockets, no Dispatch.
        .target(name: "WebSocketCodec"),
        .target(name: "HTTPCodec"),

        // Sockets, event loops, HTTP and WebSocket connections.
        .target(name: "CPosix"),
        // OpenSSL from the system (libssl-dev): SHA-256 of resume tokens, TLS in Transport.
        .systemLibrary(name: "COpenSSL", pkgConfig: "openssl", providers: [.apt(["libssl-dev"])]),
        // zlib from the system (zlib1g-dev) and permessage-deflate (RFC 7692) on it.
        .systemLibrary(name: "CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),
        .target(name: "PerMessageDeflate", dependencies: ["WebSocketCodec", "CZlib"]),
        // TLS (OpenSSL 3, non-blocking) lives in Transport, behind the same Connection as plain TCP.
        .target(name: "Transport", dependencies: ["CPosix", "COpenSSL", "WebSocketCodec", "HTTPCodec", "PerMessageDeflate"]),
        // For tests, never shipped: a clock that moves only when a test says so, a TSan-visible lock.
        .target(name: "TransportTesting", dependencies: ["Transport"]),

        // Wire types of PROTOCOL.md, shared by server, clients and tests.
        .target(name: "LeaseProtocol"),
        // The lease table: a pure state machine, no I/O, no clock. Resource attributes are the
        // wire's JSON values, passed through untouched.
        .target(name: "LeaseCore", dependencies: ["LeaseProtocol"]),

        .target(
            name: "LeaseholdServer",
            dependencies: [
                "Transport", "HTTPCodec", "LeaseCore", "LeaseProtocol", "COpenSSL", "CPosix", "PerMessageDeflate",
                .product(name: "Logging", package: "swift-log"),
                // InventoryFile also imports Yams' CYaml (libyaml's events show anchors and aliases,
                // which Yams' tree hides); Yams exports no product for it.
                .product(name: "Yams", package: "Yams"),
            ],
            resources: [.embedInCode("Static/app.js"), .embedInCode("Static/app.css"), .embedInCode("Static/favicon.svg"), .embedInCode("Static/history.js")]
        ),
        .target(name: "LeaseholdClient", dependencies: ["Transport", "HTTPCodec", "LeaseProtocol"]),

        .executableTarget(
            name: "leasehold",
            dependencies: [
                "LeaseholdServer", "LeaseholdClient", "Transport", "CPosix",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(name: "leasehold-echo", dependencies: ["Transport", "HTTPCodec"]),

        .testTarget(name: "WebSocketCodecTests", dependencies: ["WebSocketCodec"]),
        .testTarget(name: "HTTPCodecTests", dependencies: ["HTTPCodec"]),
        .testTarget(name: "PerMessageDeflateTests", dependencies: ["PerMessageDeflate", "WebSocketCodec", "CZlib"]),
        .testTarget(name: "TransportTests", dependencies: ["Transport", "TransportTesting", "PerMessageDeflate"]),
        .testTarget(name: "LeaseCoreTests", dependencies: ["LeaseCore", "LeaseProtocol"]),
        .testTarget(name: "LeaseProtocolTests", dependencies: ["LeaseProtocol"]),
        .testTarget(
            name: "LeaseholdServerTests",
            dependencies: ["LeaseholdServer", "LeaseholdClient", "Transport", "HTTPCodec", "LeaseProtocol", "TransportTesting",
                           "LeaseCore", "PerMessageDeflate", .product(name: "Logging", package: "swift-log")]
        ),
        .testTarget(
            name: "LeaseholdClientTests",
            dependencies: [
                "LeaseholdClient", "LeaseholdServer", "LeaseProtocol", "Transport", "TransportTesting",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
