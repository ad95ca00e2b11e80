#if canImport(Glibc)
import Glibc
#endif

/// A block of IP addresses, `10.0.0.0/8`, `fd00::/8`, or one address (`127.0.0.1`, `::1`).
/// IPv4 is matched as its IPv4-mapped IPv6 form, so `127.0.0.1/32` also covers `::ffff:127.0.0.1`,
/// the name a dual-stack listener gives an IPv4 peer.
public struct AddressRange: Sendable, Equatable, CustomStringConvertible {
    private let network: [UInt8]  // 16 bytes
    private let prefix: Int  // over the 16 bytes
    public let description: String

    public init(parsing text: String) throws(AddressError) {
        let parts = text.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        guard let address = Self.bytes(String(parts[0])) else {
            throw AddressError(text: text, problem: "expected an IP address or ADDRESS/PREFIX")
        }
        let isV4 = !parts[0].contains(":")
        let width = isV4 ? 32 : 128
        var length = width
        if parts.count == 2 {
            guard let given = Int(parts[1]), (0...width).contains(given) else {
                throw AddressError(text: text, problem: "prefix length must be 0-\(width)")
            }
            length = given
        }
        prefix = length + (isV4 ? 96 : 0)
        network = Self.masked(address, prefix)
        description = text
    }

    /// Whether `host` (an address as `SocketAddress.host` writes it) lies in this range.
    public func contains(_ host: String) -> Bool {
        guard let address = Self.bytes(host) else { return false }
        return Self.masked(address, prefix) == network
    }

    /// 16 bytes: IPv6 as it is, IPv4 mapped into `::ffff:0:0/96`; nil for anything else.
    private static func bytes(_ text: String) -> [UInt8]? {
        var v6 = in6_addr()
        if inet_pton(AF_INET6, text, &v6) == 1 {
            return withUnsafeBytes(of: &v6) { Array($0) }
        }
        var v4 = in_addr()
        guard inet_pton(AF_INET, text, &v4) == 1 else { return nil }
        return [UInt8](repeating: 0, count: 10) + [0xFF, 0xFF] + withUnsafeBytes(of: &v4) { Array($0) }
    }

    private static func masked(_ bytes: [UInt8], _ prefix: Int) -> [UInt8] {
        bytes.enumerated().map { index, byte in
            let bits = min(8, max(0, prefix - index * 8))
            return bits == 8 ? byte : byte & ~(0xFF >> bits)
        }
    }
}
