// XOR masking of payload bytes (RFC 6455 §5.3), eight bytes at a time.

public enum WebSocketMasking {
    /// XORs `bytes` in place with the masking key, as if `bytes` started at position `offset`
    /// of the payload. Passing the running offset lets one payload be masked across several buffers.
    public static func apply(key: (UInt8, UInt8, UInt8, UInt8), offset: Int, to bytes: UnsafeMutableRawBufferPointer) {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        xor(from: UnsafeRawPointer(base), to: base, count: bytes.count, keyWord: keyWord(key, offset: offset))
    }

    /// The key repeated to fill 8 bytes, rotated so that its first byte in memory is the key byte
    /// for payload position `offset`.
    @inline(__always)
    static func keyWord(_ key: (UInt8, UInt8, UInt8, UInt8), offset: Int) -> UInt64 {
        // Built so that byte i in memory is key[i % 4]: little-endian value, converted for the host.
        let key32 = UInt32(key.0) | UInt32(key.1) << 8 | UInt32(key.2) << 16 | UInt32(key.3) << 24
        // `offset & 3` is in 0...3 even for negative offsets; rotating right by whole bytes moves key[n] first.
        let shift = UInt32((offset & 3) * 8)
        let rotated = (key32 &>> shift) | (key32 &<< (32 &- shift))
        let word = UInt64(rotated) | UInt64(rotated) << 32
        return UInt64(littleEndian: word)
    }

    /// `destination[i] = source[i] ^ keyWord-byte(i)`; source and destination may be the same memory.
    @inline(__always)
    static func xor(from source: UnsafeRawPointer, to destination: UnsafeMutableRawPointer, count: Int, keyWord: UInt64) {
        var index = 0
        // Four independent words per round so the loads, XORs and stores overlap (and the
        // optimiser is free to widen them to vector registers).
        while count - index >= 32 {
            let a = source.loadUnaligned(fromByteOffset: index, as: UInt64.self)
            let b = source.loadUnaligned(fromByteOffset: index + 8, as: UInt64.self)
            let c = source.loadUnaligned(fromByteOffset: index + 16, as: UInt64.self)
            let d = source.loadUnaligned(fromByteOffset: index + 24, as: UInt64.self)
            destination.storeBytes(of: a ^ keyWord, toByteOffset: index, as: UInt64.self)
            destination.storeBytes(of: b ^ keyWord, toByteOffset: index + 8, as: UInt64.self)
            destination.storeBytes(of: c ^ keyWord, toByteOffset: index + 16, as: UInt64.self)
            destination.storeBytes(of: d ^ keyWord, toByteOffset: index + 24, as: UInt64.self)
            index += 32
        }
        while count - index >= 8 {
            let a = source.loadUnaligned(fromByteOffset: index, as: UInt64.self)
            destination.storeBytes(of: a ^ keyWord, toByteOffset: index, as: UInt64.self)
            index += 8
        }
        // The tail: the key word's bytes in memory order, one at a time (index is a multiple of 8).
        var remainingKey = UInt64(littleEndian: keyWord)
        while index < count {
            let byte = source.load(fromByteOffset: index, as: UInt8.self) ^ UInt8(truncatingIfNeeded: remainingKey)
            destination.storeBytes(of: byte, toByteOffset: index, as: UInt8.self)
            remainingKey >>= 8
            index += 1
        }
    }
}
