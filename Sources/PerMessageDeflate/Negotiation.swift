// permessage-deflate negotiation (RFC 7692 §5, §7.1): header parameters in, parameters out.
import WebSocketCodec

/// How this side runs permessage-deflate: the limits it offers or accepts and what it spends on
/// zlib. A deflate stream costs about `2^(windowBits+2) + 2^(memoryLevel+9)` bytes while it
/// exists (zlib's own figure), an inflate stream about 7 KiB plus `2^windowBits`; the defaults
/// keep both small, and streams exist only while a message is being (de)compressed unless
/// context takeover makes them worth keeping.
public struct PerMessageDeflateConfiguration: Sendable, Equatable {
    /// The largest window this side compresses with (9-15). A peer may ask for less.
    public var compressionWindowBits = 12
    /// zlib's memLevel for deflate streams (1-9): 5 costs 16 KiB of hash and buffer.
    public var memoryLevel = 5
    /// zlib's compression level (1-9).
    public var compressionLevel = 6
    /// Messages shorter than this go out uncompressed (RSV1 clear): not worth a stream.
    public var minimumCompressedSize = 64
    /// The window the peer's compressor may use, asked for when the peer lets us (8-15). Our
    /// inflate stream for a peer that keeps its context costs 2^this.
    public var peerWindowBits = 15
    /// Ask the peer to compress every message on its own (`client_no_context_takeover` from a
    /// server, `server_no_context_takeover` from a client): then no inflate stream outlives a
    /// message. The peer's messages compress a little worse.
    public var requestPeerNoContextTakeover = false
    /// Free our deflate stream after every message even where we may keep context: for
    /// connections whose messages are few and far between (a lease's), where holding ~40 KiB per
    /// connection between them would cost more than the better ratio gains.
    public var releaseAfterEachMessage = false

    public init() {}

    public static let `default` = PerMessageDeflateConfiguration()
}

/// What was agreed, from this side's point of view.
public struct PerMessageDeflateParameters: Sendable, Equatable {
    /// Our compressor starts each message afresh.
    public var localNoContextTakeover: Bool
    /// The peer's compressor starts each message afresh: our inflater need not outlive a message.
    public var remoteNoContextTakeover: Bool
    /// The window we may compress with (8-15; zlib compresses a window of 8 as 9, whose
    /// distances still fit 256 bytes).
    public var localMaxWindowBits: Int
    /// The window the peer compresses with at most: our inflater's window.
    public var remoteMaxWindowBits: Int

    public init(localNoContextTakeover: Bool = false, remoteNoContextTakeover: Bool = false,
                localMaxWindowBits: Int = 15, remoteMaxWindowBits: Int = 15) {
        self.localNoContextTakeover = localNoContextTakeover
        self.remoteNoContextTakeover = remoteNoContextTakeover
        self.localMaxWindowBits = localMaxWindowBits
        self.remoteMaxWindowBits = remoteMaxWindowBits
    }
}

public enum PerMessageDeflateNegotiation {
    public static let extensionName = "permessage-deflate"

    /// The parameters of one offer or response, checked: each at most once, known names only,
    /// window bits 8-15 in plain decimal. nil when the element cannot be honoured.
    struct Parsed {
        var serverNoContextTakeover = false
        var clientNoContextTakeover = false
        var serverMaxWindowBits: Int?
        /// `.some(nil)`: present without a value (allowed in an offer only).
        var clientMaxWindowBits: Int??
    }

    static func parse(_ element: WebSocketExtensionOffer) -> Parsed? {
        var parsed = Parsed()
        var seen: Set<String> = []
        for (rawName, value) in element.parameters {
            let name = rawName.lowercased()
            guard seen.insert(name).inserted else { return nil }
            switch name {
            case "server_no_context_takeover":
                guard value == nil else { return nil }
                parsed.serverNoContextTakeover = true
            case "client_no_context_takeover":
                guard value == nil else { return nil }
                parsed.clientNoContextTakeover = true
            case "server_max_window_bits":
                guard let value, let bits = windowBits(value) else { return nil }
                parsed.serverMaxWindowBits = bits
            case "client_max_window_bits":
                if let value {
                    guard let bits = windowBits(value) else { return nil }
                    parsed.clientMaxWindowBits = .some(bits)
                } else {
                    parsed.clientMaxWindowBits = .some(nil)
                }
            default:
                return nil
            }
        }
        return parsed
    }

    /// `8`-`15`, no sign, no leading zero (RFC 7692 §7.1.2.1).
    static func windowBits(_ text: String) -> Int? {
        guard let first = text.utf8.first, first != UInt8(ascii: "0"), text.utf8.count <= 2,
              text.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }),
              let value = Int(text), (8...15).contains(value) else { return nil }
        return value
    }

    // MARK: server

    /// The server's choice among a client's offers (in the client's order of preference): the
    /// first permessage-deflate offer it can honour, with the response element to send. Offers
    /// with unknown or repeated parameters or out-of-range values are declined (RFC 7692 §5.1).
    public static func accept(offers: [WebSocketExtensionOffer], configuration: PerMessageDeflateConfiguration)
        -> (response: WebSocketExtensionOffer, parameters: PerMessageDeflateParameters)?
    {
        for offer in offers where offer.name.lowercased() == extensionName {
            guard let parsed = parse(offer) else { continue }
            var response: [(String, String?)] = []
            var parameters = PerMessageDeflateParameters()
            if parsed.serverNoContextTakeover {
                response.append(("server_no_context_takeover", nil))
                parameters.localNoContextTakeover = true
            }
            if parsed.clientNoContextTakeover || configuration.requestPeerNoContextTakeover {
                response.append(("client_no_context_takeover", nil))
                parameters.remoteNoContextTakeover = true
            }
            let ourWindow = min(15, max(9, configuration.compressionWindowBits))
            if let bits = parsed.serverMaxWindowBits {
                // The client asks for a window of `bits` at most: agreed; we use the smaller.
                response.append(("server_max_window_bits", String(bits)))
                parameters.localMaxWindowBits = min(bits, ourWindow)
            } else {
                parameters.localMaxWindowBits = ourWindow
            }
            if case .some(let offered) = parsed.clientMaxWindowBits {
                // The client lets us bound its window.
                let bits = min(offered ?? 15, min(15, max(8, configuration.peerWindowBits)))
                response.append(("client_max_window_bits", String(bits)))
                parameters.remoteMaxWindowBits = bits
            } else {
                parameters.remoteMaxWindowBits = 15
            }
            return (WebSocketExtensionOffer(name: extensionName, parameters: response), parameters)
        }
        return nil
    }

    // MARK: client

    /// What a client offers: it lets the server bound its window (`client_max_window_bits`)
    /// and, when configured, asks the server not to keep context.
    public static func offer(configuration: PerMessageDeflateConfiguration) -> WebSocketExtensionOffer {
        var parameters: [(String, String?)] = [("client_max_window_bits", nil)]
        if configuration.requestPeerNoContextTakeover { parameters.append(("server_no_context_takeover", nil)) }
        if configuration.peerWindowBits < 15 {
            parameters.append(("server_max_window_bits", String(max(8, configuration.peerWindowBits))))
        }
        return WebSocketExtensionOffer(name: extensionName, parameters: parameters)
    }

    /// Checks the server's answer to `offer(configuration:)`. nil: the server declined
    /// compression (no element). Throws when the answer is not one a client may accept (unknown
    /// extension, unknown or repeated parameters, a window we did not let it bound): the client
    /// must then fail the connection (RFC 6455 §9.1).
    public static func validateResponse(_ elements: [WebSocketExtensionOffer], configuration: PerMessageDeflateConfiguration)
        throws(WebSocketError) -> PerMessageDeflateParameters?
    {
        guard let element = elements.first else { return nil }
        guard elements.count == 1, element.name.lowercased() == extensionName else {
            throw WebSocketError(closeCode: WebSocketCloseCodes.protocolError,
                                 reason: "server accepted an extension that was not offered: \(WebSocketExtensions.headerValue(elements))")
        }
        guard let parsed = parse(element) else {
            throw WebSocketError(closeCode: WebSocketCloseCodes.protocolError,
                                 reason: "invalid permessage-deflate response: \(element.headerValue)")
        }
        if configuration.requestPeerNoContextTakeover, !parsed.serverNoContextTakeover {
            throw WebSocketError(closeCode: WebSocketCloseCodes.protocolError,
                                 reason: "server did not agree to server_no_context_takeover")
        }
        var parameters = PerMessageDeflateParameters()
        parameters.localNoContextTakeover = parsed.clientNoContextTakeover
        parameters.remoteNoContextTakeover = parsed.serverNoContextTakeover
        let ourWindow = min(15, max(9, configuration.compressionWindowBits))
        switch parsed.clientMaxWindowBits {
        case .some(.some(let bits)): parameters.localMaxWindowBits = min(bits, ourWindow)
        case .some(.none):
            throw WebSocketError(closeCode: WebSocketCloseCodes.protocolError,
                                 reason: "client_max_window_bits without a value in a response")
        case .none: parameters.localMaxWindowBits = ourWindow
        }
        let asked = configuration.peerWindowBits < 15 ? max(8, configuration.peerWindowBits) : 15
        if let bits = parsed.serverMaxWindowBits {
            guard bits <= asked else {
                throw WebSocketError(closeCode: WebSocketCloseCodes.protocolError,
                                     reason: "server_max_window_bits=\(bits) exceeds the \(asked) offered")
            }
            parameters.remoteMaxWindowBits = bits
        } else {
            guard asked == 15 else {
                throw WebSocketError(closeCode: WebSocketCloseCodes.protocolError,
                                     reason: "server ignored server_max_window_bits=\(asked)")
            }
            parameters.remoteMaxWindowBits = 15
        }
        return parameters
    }
}
