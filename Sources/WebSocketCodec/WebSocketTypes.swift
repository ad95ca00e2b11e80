// Value types shared by the WebSocket decoder, encoder and handshake (RFC 6455).

/// Which end of the connection this codec serves; it decides the masking rule for incoming frames.
public enum WebSocketRole: Sendable {
    /// Incoming frames come from a client and MUST be masked (RFC 6455 §5.1).
    case server
    /// Incoming frames come from a server and MUST NOT be masked.
    case client
}

public enum WebSocketOpcode: UInt8, Sendable {
    case continuation = 0x0
    case text = 0x1
    case binary = 0x2
    case close = 0x8
    case ping = 0x9
    case pong = 0xA

    /// Control frames (close, ping, pong) have the high bit of the opcode set (RFC 6455 §5.5).
    public var isControl: Bool { rawValue & 0x8 != 0 }
}

/// A protocol violation by the peer, carrying the close code to send back.
public struct WebSocketError: Error, Equatable, Sendable, CustomStringConvertible {
    public let closeCode: UInt16
    /// Names the problem; at most 123 bytes of UTF-8 so it fits a close frame.
    public let reason: String

    public init(closeCode: UInt16, reason: String) {
        self.closeCode = closeCode
        self.reason = reason
    }

    public var description: String { "WebSocketError(\(closeCode): \(reason))" }

    static func protocolError(_ reason: String) -> WebSocketError {
        WebSocketError(closeCode: WebSocketCloseCodes.protocolError, reason: reason)
    }
    static func invalidPayload(_ reason: String) -> WebSocketError {
        WebSocketError(closeCode: WebSocketCloseCodes.invalidPayloadData, reason: reason)
    }
    static func tooBig(_ reason: String) -> WebSocketError {
        WebSocketError(closeCode: WebSocketCloseCodes.messageTooBig, reason: reason)
    }
}

/// One complete unit of what the peer sent: a whole message (fragments already joined) or a control frame.
public enum WebSocketEvent: Equatable, Sendable {
    /// A complete text message whose UTF-8 has already been validated.
    case text([UInt8])
    case binary([UInt8])
    case ping([UInt8])
    case pong([UInt8])
    /// `code` is nil when the peer's close frame had an empty payload (RFC 6455 §7.1.5: "no status code").
    case close(code: UInt16?, reason: String)
}

public enum WebSocketCloseCodes {
    public static let normalClosure: UInt16 = 1000
    public static let goingAway: UInt16 = 1001
    public static let protocolError: UInt16 = 1002
    public static let unsupportedData: UInt16 = 1003
    public static let invalidPayloadData: UInt16 = 1007
    public static let policyViolation: UInt16 = 1008
    public static let messageTooBig: UInt16 = 1009
    public static let mandatoryExtension: UInt16 = 1010
    public static let internalError: UInt16 = 1011

    /// Whether a peer may put `code` in a close frame.
    ///
    /// 1000–1003 and 1007–1011 from RFC 6455, 1012–1014 as registered with IANA since (service
    /// restart, try again later, bad gateway: proxies send them), 3000–4999 for libraries and
    /// applications. 1004–1006 are reserved or must never be sent, 1015–2999 are unassigned, and
    /// below 1000 or above 4999 is no close code. This agrees with Autobahn|Testsuite (7.7.x valid,
    /// 7.9.x invalid), which does not test 1012–1014.
    public static func isValidOnWire(_ code: UInt16) -> Bool {
        switch code {
        case 1000...1003, 1007...1014, 3000...4999: return true
        default: return false
        }
    }
}
