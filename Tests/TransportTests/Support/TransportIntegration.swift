import Testing

/// Every suite of this target nests in here, run one test at a time: the tests share two cores
/// with each other and with the rest of `swift test`, and the dead-peer and timeout tests need a
/// peer that answers within a few hundred milliseconds. Serial, the whole target takes ~15 s.
@Suite("Transport over real sockets", .serialized)
enum TransportIntegration {}
