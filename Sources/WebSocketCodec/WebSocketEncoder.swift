// Frame writer (RFC 6455 §5.2). Our own output, so misuse is a programmer error (precondition).

public enum WebSocketEncoder {
    /// Appends one frame (header + payload, masked with `maskingKey` when given: client role) to `buffer`.
    /// Control frames must have `fin` set and at most 125 bytes of payload.
    public static func appendFrame(
        opcode: WebSocketOpcode,
        payload: UnsafeRawBufferPointer,
        fin: Bool = true,
        rsv1: Bool = false,
        maskingKey: (UInt8, UInt8, UInt8, UInt8)? = nil,
        into buffer: inout [UInt8]
    ) {
        let length = payload.count
        buffer.reserveCapacity(buffer.count + maximumHeaderLength + length)
        appendHeader(opcode: opcode, length: length, fin: fin, rsv1: rsv1, masked: maskingKey != nil, into: &buffer)
        guard let key = maskingKey else {
            buffer.append(contentsOf: payload)
            return
        }
        buffer.append(key.0)
        buffer.append(key.1)
        buffer.append(key.2)
        buffer.append(key.3)
        let start = buffer.count
        buffer.append(contentsOf: payload)
        buffer.withUnsafeMutableBytes {
            WebSocketMasking.apply(key: key, offset: 0, to: UnsafeMutableRawBufferPointer(rebasing: $0[start...]))
        }
    }

    /// Appends a frame's header up to (not including) the masking key: what precedes a payload
    /// of `length` bytes that the caller appends itself.
    public static func appendHeader(opcode: WebSocketOpcode, length: Int, fin: Bool = true, rsv1: Bool = false,
                                    masked: Bool = false, into buffer: inout [UInt8]) {
        precondition(!opcode.isControl || (fin && length <= 125), "control frames are final and carry at most 125 bytes")
        buffer.append((fin ? 0x80 : 0) | (rsv1 ? 0x40 : 0) | opcode.rawValue)
        let maskBit: UInt8 = masked ? 0x80 : 0
        if length <= 125 {
            buffer.append(maskBit | UInt8(truncatingIfNeeded: length))
        } else if length <= 0xFFFF {
            buffer.append(maskBit | 126)
            buffer.append(UInt8(truncatingIfNeeded: length >> 8))
            buffer.append(UInt8(truncatingIfNeeded: length))
        } else {
            buffer.append(maskBit | 127)
            let wide = UInt64(length)
            for shift in stride(from: 56, through: 0, by: -8) {
                buffer.append(UInt8(truncatingIfNeeded: wide >> UInt64(shift)))
            }
        }
    }

    public static func appendFrame(
        opcode: WebSocketOpcode,
        payload: [UInt8],
        fin: Bool = true,
        rsv1: Bool = false,
        maskingKey: (UInt8, UInt8, UInt8, UInt8)? = nil,
        into buffer: inout [UInt8]
    ) {
        payload.withUnsafeBytes {
            appendFrame(opcode: opcode, payload: $0, fin: fin, rsv1: rsv1, maskingKey: maskingKey, into: &buffer)
        }
    }

    /// 2 bytes of first/length, 8 of extended length, 4 of masking key.
    public static let maximumHeaderLength = 14

    /// A close frame payload: the code in network byte order, then `reason` cut to fit the
    /// 125-byte control-frame limit (123 bytes) without splitting a UTF-8 sequence.
    public static func closePayload(code: UInt16, reason: String) -> [UInt8] {
        var payload: [UInt8] = [UInt8(truncatingIfNeeded: code >> 8), UInt8(truncatingIfNeeded: code)]
        let utf8 = Array(reason.utf8)
        var cut = min(utf8.count, 123)
        // Back off to a scalar boundary: never end on a lead byte whose continuations were cut.
        while cut < utf8.count && cut > 0 && utf8[cut] & 0xC0 == 0x80 { cut -= 1 }
        payload.append(contentsOf: utf8[..<cut])
        return payload
    }

    /// A random masking key for client frames.
    public static func makeMaskingKey() -> (UInt8, UInt8, UInt8, UInt8) {
        var generator = SystemRandomNumberGenerator()
        let word = generator.next() as UInt32
        return (UInt8(truncatingIfNeeded: word), UInt8(truncatingIfNeeded: word >> 8),
                UInt8(truncatingIfNeeded: word >> 16), UInt8(truncatingIfNeeded: word >> 24))
    }
}
