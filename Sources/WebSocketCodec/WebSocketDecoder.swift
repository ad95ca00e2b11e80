// Resumable frame decoder and message assembler (RFC 6455 §5).
//
// `feed` only stores bytes; `nextEvent` parses as far as the stored bytes allow and returns one
// event at a time. Every check happens at the first byte that makes it possible: header rules
// on the first two bytes, size limits as soon as the length field is complete (before any payload
// is buffered), UTF-8 of text payloads as each piece arrives.

public struct WebSocketDecoder: Sendable {
    public let role: WebSocketRole
    public let maxMessageSize: Int
    /// RSV bits (0x40 = RSV1, 0x20 = RSV2, 0x10 = RSV3) that a negotiated extension gives meaning to.
    public let reservedBitsAllowed: UInt8

    /// Received bytes not yet parsed; bytes before `readIndex` are consumed.
    private var input: [UInt8] = []
    private var readIndex = 0

    private var phase: Phase = .awaitingHeader
    private var frame = FrameHeader()
    /// Payload bytes of the current frame not yet consumed.
    private var payloadRemaining = 0
    /// Payload bytes of the current frame already consumed (position in the masking key).
    private var payloadConsumed = 0

    /// The opcode (text/binary) of the message being assembled, nil between messages.
    private var messageOpcode: WebSocketOpcode?
    /// RSV bits of the first frame of the message being assembled (for extensions).
    private var messageReservedBits: UInt8 = 0
    private var messageBuffer: [UInt8] = []
    private var utf8 = UTF8Validation.Validator()
    /// Payload of the control frame in progress (at most 125 bytes).
    private var controlBuffer: [UInt8] = []

    private enum Phase: Sendable {
        case awaitingHeader
        case payload
        /// A close frame was delivered: nothing more is parsed.
        case closed
        case failed(WebSocketError)

        var isTerminal: Bool {
            switch self {
            case .closed, .failed: return true
            case .awaitingHeader, .payload: return false
            }
        }
    }

    private struct FrameHeader: Sendable {
        var fin = false
        var reservedBits: UInt8 = 0
        var opcode: WebSocketOpcode = .continuation
        var maskingKey: (UInt8, UInt8, UInt8, UInt8)?
        var length = 0
    }


    public init(role: WebSocketRole, maxMessageSize: Int, reservedBitsAllowed: UInt8 = 0) {
        self.role = role
        self.maxMessageSize = max(0, maxMessageSize)
        self.reservedBitsAllowed = reservedBitsAllowed & 0x70
    }

    /// True when no partial frame or message is buffered.
    public var isIdle: Bool {
        guard case .awaitingHeader = phase else { return phase.isTerminal }
        return readIndex == input.count && messageOpcode == nil
    }

    /// RSV bits of the first frame of the message most recently returned (or being assembled).
    /// permessage-deflate reads it to know whether to inflate. A message with RSV bits set is
    /// delivered as it arrived, so its UTF-8 is NOT validated here: the extension that
    /// transforms it must validate text after the transform.
    public var lastMessageReservedBits: UInt8 { messageReservedBits }

    /// Drops buffer capacity when nothing is buffered, so an idle connection costs little memory.
    public mutating func releaseIdleBuffers() {
        guard isIdle else { return }
        input = []
        readIndex = 0
        messageBuffer = []
        controlBuffer = []
    }

    /// Stores bytes for `nextEvent`. Drain `nextEvent` until nil after each feed: payload bytes
    /// then move out of the input buffer at once, so it only ever holds one read's worth.
    /// Ignored after a close event or an error.
    public mutating func feed(_ bytes: UnsafeRawBufferPointer) {
        guard !phase.isTerminal, bytes.count > 0 else { return }
        compactInput()
        input.append(contentsOf: bytes)
    }

    public mutating func feed(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { feed($0) }
    }

    /// The next complete message or control frame, nil when more bytes are needed. After an
    /// error the decoder stays failed and throws the same error again; after a close event it
    /// returns nil for ever.
    public mutating func nextEvent() throws(WebSocketError) -> WebSocketEvent? {
        while true {
            switch phase {
            case .closed:
                return nil
            case .failed(let error):
                throw error
            case .awaitingHeader:
                let parsed: Bool
                do {
                    parsed = try parseHeader()
                } catch {
                    try fail(error)
                }
                guard parsed else {
                    releaseConsumedInput()
                    return nil
                }
                // An empty frame still completes (or is) a message; handle it without more input.
            case .payload:
                break
            }
            let event: WebSocketEvent?
            do {
                event = try consumePayload()
            } catch {
                try fail(error)
            }
            if let event { return event }
            if case .payload = phase {   // the frame needs more bytes
                releaseConsumedInput()
                return nil
            }
        }
    }

    private mutating func fail(_ error: WebSocketError) throws(WebSocketError) -> Never {
        phase = .failed(error)
        input = []
        readIndex = 0
        messageBuffer = []
        controlBuffer = []
        throw error
    }

    // MARK: Header

    /// Parses the frame header at `readIndex` if it is complete, checking each rule as soon as
    /// the bytes it needs are present. Returns false when more bytes are needed.
    private mutating func parseHeader() throws(WebSocketError) -> Bool {
        let available = input.count - readIndex
        guard available >= 1 else { return false }
        let first = input[readIndex]
        let fin = first & 0x80 != 0
        let reservedBits = first & 0x70
        guard reservedBits & ~reservedBitsAllowed == 0 else {
            throw .protocolError("reserved bits set without a negotiated extension")
        }
        guard let opcode = WebSocketOpcode(rawValue: first & 0x0F) else {
            throw .protocolError("unknown opcode \(first & 0x0F)")
        }
        if opcode.isControl {
            guard fin else { throw .protocolError("fragmented control frame") }
            guard reservedBits == 0 else { throw .protocolError("reserved bits set on a control frame") }
        } else if opcode == .continuation {
            guard messageOpcode != nil else { throw .protocolError("continuation frame without a message to continue") }
            guard reservedBits == 0 else { throw .protocolError("reserved bits set on a continuation frame") }
        } else {
            guard messageOpcode == nil else { throw .protocolError("new data frame while a fragmented message is open") }
        }

        guard available >= 2 else { return false }
        let second = input[readIndex + 1]
        let masked = second & 0x80 != 0
        switch role {
        case .server: guard masked else { throw .protocolError("client frame is not masked") }
        case .client: guard !masked else { throw .protocolError("server frame is masked") }
        }
        let shortLength = Int(second & 0x7F)
        if opcode.isControl && shortLength > 125 {
            throw .protocolError("control frame payload longer than 125 bytes")
        }

        var headerLength = 2
        let length: Int
        switch shortLength {
        case 126:
            guard available >= 4 else { return false }
            length = Int(input[readIndex + 2]) << 8 | Int(input[readIndex + 3])
            headerLength = 4
        case 127:
            guard available >= 10 else { return false }
            var wide: UInt64 = 0
            for offset in 2..<10 { wide = wide << 8 | UInt64(input[readIndex + offset]) }
            guard wide & (1 << 63) == 0, let exact = Int(exactly: wide) else {
                throw .protocolError("64-bit payload length has its most significant bit set")
            }
            length = exact
            headerLength = 10
        default:
            length = shortLength
        }
        if !opcode.isControl {
            let alreadyAssembled = messageOpcode == nil ? 0 : messageBuffer.count
            // Subtraction instead of addition: cannot overflow.
            guard length <= maxMessageSize && alreadyAssembled <= maxMessageSize - length else {
                throw .tooBig("message longer than \(maxMessageSize) bytes")
            }
        }

        var maskingKey: (UInt8, UInt8, UInt8, UInt8)?
        if masked {
            guard available >= headerLength + 4 else { return false }
            let k = readIndex + headerLength
            maskingKey = (input[k], input[k + 1], input[k + 2], input[k + 3])
            headerLength += 4
        }

        readIndex += headerLength
        frame = FrameHeader(fin: fin, reservedBits: reservedBits, opcode: opcode, maskingKey: maskingKey, length: length)
        payloadRemaining = length
        payloadConsumed = 0
        phase = .payload

        switch opcode {
        case .text, .binary:
            messageOpcode = opcode
            messageReservedBits = reservedBits
            utf8 = UTF8Validation.Validator()
            messageBuffer.removeAll(keepingCapacity: true)
            reserveMessageCapacity(forFrameLength: length)
        case .continuation:
            reserveMessageCapacity(forFrameLength: length)
        case .close, .ping, .pong:
            controlBuffer.removeAll(keepingCapacity: true)
            controlBuffer.reserveCapacity(length)
        }
        return true
    }

    /// Reserves room for the frame, but never more than the bytes at hand plus a modest step:
    /// a 14-byte header announcing a huge frame must not make us allocate it up front.
    private mutating func reserveMessageCapacity(forFrameLength length: Int) {
        let expected = min(length, max(input.count - readIndex, 64 * 1024))
        if messageBuffer.capacity - messageBuffer.count < expected {
            messageBuffer.reserveCapacity(messageBuffer.count + expected)
        }
    }

    // MARK: Payload

    /// Moves the available payload bytes of the current frame to their destination (unmasking and
    /// validating them on the way). Returns an event when the frame completes one.
    private mutating func consumePayload() throws(WebSocketError) -> WebSocketEvent? {
        let take = min(payloadRemaining, input.count - readIndex)
        if take > 0 {
            let range = readIndex..<(readIndex + take)
            readIndex += take
            if frame.opcode.isControl {
                Self.append(input, range, maskingKey: frame.maskingKey, keyOffset: payloadConsumed, to: &controlBuffer)
            } else {
                let start = messageBuffer.count
                Self.append(input, range, maskingKey: frame.maskingKey, keyOffset: payloadConsumed, to: &messageBuffer)
                if messageOpcode == .text && messageReservedBits == 0 {
                    // Fail fast: check the new bytes now, not when the message is complete.
                    // (A compressed message is validated by whoever inflates it.)
                    let valid = messageBuffer.withUnsafeBytes { utf8.feed(UnsafeRawBufferPointer(rebasing: $0[start...])) }
                    guard valid else { throw .invalidPayload("text message is not valid UTF-8") }
                }
            }
            payloadRemaining -= take
            payloadConsumed += take
        }
        guard payloadRemaining == 0 else { return nil }
        phase = .awaitingHeader
        releaseConsumedInput()
        return try completeFrame()
    }

    /// Appends `input[range]` to `destination`, unmasking it in the destination.
    private static func append(
        _ input: [UInt8], _ range: Range<Int>, maskingKey: (UInt8, UInt8, UInt8, UInt8)?, keyOffset: Int,
        to destination: inout [UInt8]
    ) {
        let start = destination.count
        input.withUnsafeBytes { destination.append(contentsOf: UnsafeRawBufferPointer(rebasing: $0[range])) }
        if let key = maskingKey {
            destination.withUnsafeMutableBytes {
                WebSocketMasking.apply(key: key, offset: keyOffset, to: UnsafeMutableRawBufferPointer(rebasing: $0[start...]))
            }
        }
    }

    private mutating func completeFrame() throws(WebSocketError) -> WebSocketEvent? {
        switch frame.opcode {
        case .ping:
            return .ping(takeControlPayload())
        case .pong:
            return .pong(takeControlPayload())
        case .close:
            let event = try parseClose()
            phase = .closed
            input = []
            readIndex = 0
            return event
        case .text, .binary, .continuation:
            guard frame.fin, let opcode = messageOpcode else { return nil }
            if opcode == .text && messageReservedBits == 0 && !utf8.isComplete {
                throw .invalidPayload("text message ends inside a UTF-8 sequence")
            }
            // Hand the buffer over without copying; the next message starts with a fresh one,
            // so a large message does not leave its capacity behind.
            let payload = messageBuffer
            messageBuffer = []
            messageOpcode = nil
            return opcode == .text ? .text(payload) : .binary(payload)
        }
    }

    private mutating func takeControlPayload() -> [UInt8] {
        // Hand the array over rather than copy it; control payloads are at most 125 bytes.
        let payload = controlBuffer
        controlBuffer = []
        return payload
    }

    /// RFC 6455 §5.5.1 and §7.1.5: empty, or a 2-byte code followed by a UTF-8 reason.
    private mutating func parseClose() throws(WebSocketError) -> WebSocketEvent {
        let payload = takeControlPayload()
        guard !payload.isEmpty else { return .close(code: nil, reason: "") }
        guard payload.count >= 2 else { throw .protocolError("close frame payload of 1 byte") }
        let code = UInt16(payload[0]) << 8 | UInt16(payload[1])
        guard WebSocketCloseCodes.isValidOnWire(code) else {
            throw .protocolError("close code \(code) is not allowed on the wire")
        }
        let reasonBytes = payload[2...]
        guard reasonBytes.withUnsafeBytes({ UTF8Validation.isValid($0) }) else {
            throw .invalidPayload("close reason is not valid UTF-8")
        }
        return .close(code: code, reason: String(decoding: reasonBytes, as: UTF8.self))
    }

    // MARK: Input buffer housekeeping

    /// Before appending: drop consumed bytes so the buffer does not grow without bound.
    private mutating func compactInput() {
        guard readIndex > 0 else { return }
        if readIndex == input.count {
            input = []
        } else {
            input.removeSubrange(0..<readIndex)
        }
        readIndex = 0
    }

    /// Waiting for more bytes with none left over: a quiet connection holds no input buffer
    /// (thousands of idle lease connections each kept their last read before).
    private mutating func releaseConsumedInput() {
        if readIndex == input.count, !input.isEmpty {
            input = []
            readIndex = 0
        }
    }
}
